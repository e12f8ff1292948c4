//! How values travel: serde with postcard (compact, maintained, no schema),
//! the same format for arguments, results and `put` objects.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Serializes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    crate::ref_wire::take_refusal();
    postcard::to_stdvec(value).map_err(|e| cannot_serialize::<T>(e))
}

/// The size of `value` serialized.
pub fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    crate::ref_wire::take_refusal();
    postcard::experimental::serialized_size(value).map_err(|e| cannot_serialize::<T>(e))
}

/// Serializes `value` into `buffer`, which must be exactly [`encoded_size`] long.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buffer: &mut [u8]) -> Result<()> {
    crate::ref_wire::take_refusal();
    postcard::to_slice(value, buffer)
        .map(|_| ())
        .map_err(|e| cannot_serialize::<T>(e))
}

/// Deserializes a `T`; `what` names the value in the error (formatted only then).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl std::fmt::Display) -> Result<T> {
    crate::ref_wire::take_refusal();
    postcard::from_bytes(bytes).map_err(|e| {
        // postcard keeps no message of a type's own: a reference inside the
        // value left it aside.
        let why = crate::ref_wire::take_refusal()
            .unwrap_or_else(|| format!("{e}; do the driver and the workers run the same build?"));
        Error::Serialization(format!(
            "cannot read {what} as a {} ({} bytes): {why}",
            std::any::type_name::<T>(),
            bytes.len()
        ))
    })
}

fn cannot_serialize<T: ?Sized>(e: postcard::Error) -> Error {
    // postcard keeps no message of a type's own: a reference inside the
    // value left it aside.
    let why = crate::ref_wire::take_refusal().unwrap_or_else(|| e.to_string());
    Error::Serialization(format!(
        "cannot serialize a {}: {why}",
        std::any::type_name::<T>()
    ))
}
