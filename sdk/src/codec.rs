//! How values travel: serde with postcard (compact, maintained, no schema),
//! the same format for arguments, results and `put` objects.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Serializes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| {
        Error::Serialization(format!(
            "cannot serialize a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// The size of `value` serialized.
pub fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    postcard::experimental::serialized_size(value).map_err(|e| {
        Error::Serialization(format!(
            "cannot serialize a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Serializes `value` into `buffer`, which must be exactly [`encoded_size`] long.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buffer: &mut [u8]) -> Result<()> {
    postcard::to_slice(value, buffer).map(|_| ()).map_err(|e| {
        Error::Serialization(format!(
            "cannot serialize a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Deserializes a `T`; `what` names the value in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::Serialization(format!(
            "cannot read {what} as a {} ({} bytes): {e}; do the driver and the workers run the same build?",
            std::any::type_name::<T>(),
            bytes.len()
        ))
    })
}
