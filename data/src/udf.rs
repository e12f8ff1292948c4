//! User functions over record batches, found by name in every process.
//!
//! Workers are the driver's own binary, so a function registered with
//! [`register_udf!`](crate::register_udf) in the driver exists in each worker
//! too; the pipeline sends its type name and serialized arguments, and the
//! worker constructs it (once per actor, or once per task).

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A transformation of record batches: a model, a parser, a filter.
///
/// ```ignore
/// struct Upper;
/// impl photon_data::BatchUdf for Upper {
///     type Args = ();
///     fn new(_: ()) -> Result<Self, String> { Ok(Upper) }
///     fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> { … }
/// }
/// photon_data::register_udf!(Upper);
/// ```
pub trait BatchUdf: Send + 'static {
    /// What the constructor takes (sent to every worker that runs it).
    type Args: Serialize + DeserializeOwned + Send;

    /// Builds the function (loads a model, opens a connection).
    fn new(args: Self::Args) -> Result<Self, String>
    where
        Self: Sized;

    /// Transforms one batch. An `Err` fails the block (see
    /// `MapOptions::max_errored_blocks`).
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String>;

    /// Columns the input must have, with the types accepted for each:
    /// checked against every input file before anything runs.
    fn input_columns(_args: &Self::Args) -> Vec<(String, Vec<DataType>)> {
        Vec::new()
    }

    /// What runs the function, for the run's stats and progress (a model's
    /// engine and device: `fast-cpu, cpu, fp32`); `None` when nothing is
    /// worth saying.
    fn describe(&self) -> Option<String> {
        None
    }
}

/// A constructed function, its argument type erased (public only because
/// [`register_udf!`](crate::register_udf)'s entries name it).
#[doc(hidden)]
pub trait ErasedUdf: Send {
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String>;
    fn describe(&self) -> Option<String>;
}

impl<U: BatchUdf> ErasedUdf for U {
    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        BatchUdf::call(self, batch)
    }

    fn describe(&self) -> Option<String> {
        BatchUdf::describe(self)
    }
}

#[doc(hidden)]
pub type DynUdf = Box<dyn ErasedUdf>;

/// One registered function.
#[doc(hidden)]
pub struct UdfEntry {
    /// `std::any::type_name` of the type.
    pub name: fn() -> &'static str,
    /// Deserializes the arguments and constructs it.
    pub construct: fn(&[u8]) -> Result<DynUdf, String>,
}

impl UdfEntry {
    /// The entry of `U` (what [`register_udf!`](crate::register_udf) submits).
    pub const fn of<U: BatchUdf>() -> Self {
        Self {
            name: std::any::type_name::<U>,
            construct: construct::<U>,
        }
    }
}

inventory::collect!(UdfEntry);

fn construct<U: BatchUdf>(args: &[u8]) -> Result<DynUdf, String> {
    let args: U::Args = serde_json::from_slice(args)
        .map_err(|e| format!("bad arguments for {}: {e}", std::any::type_name::<U>()))?;
    Ok(Box::new(U::new(args)?))
}

/// Serializes `args` for the worker side.
pub(crate) fn encode_args<U: BatchUdf>(args: &U::Args) -> crate::Result<Vec<u8>> {
    serde_json::to_vec(args).map_err(|e| {
        crate::Error::Invalid(format!(
            "cannot serialize the arguments of {}: {e}",
            std::any::type_name::<U>()
        ))
    })
}

/// Constructs the function registered under `name`.
pub(crate) fn construct_by_name(name: &str, args: &[u8]) -> Result<DynUdf, String> {
    let entry = inventory::iter::<UdfEntry>
        .into_iter()
        .find(|entry| (entry.name)() == name)
        .ok_or_else(|| {
            format!(
                "this program has no batch function {name}: register it with \
                 photon_data::register_udf!({name}) (is the worker the driver's build?)"
            )
        })?;
    (entry.construct)(args)
}

/// Whether `U` was registered (checked before a pipeline runs).
pub(crate) fn is_registered<U: BatchUdf>() -> bool {
    let name = std::any::type_name::<U>();
    inventory::iter::<UdfEntry>
        .into_iter()
        .any(|entry| (entry.name)() == name)
}

/// Registers a [`BatchUdf`] type so workers can construct it by name.
#[macro_export]
macro_rules! register_udf {
    ($udf:ty) => {
        $crate::__private::inventory::submit! {
            $crate::__private::UdfEntry::of::<$udf>()
        }
    };
}
