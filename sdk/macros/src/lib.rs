//! Attribute macros of the Photon SDK. Use them through the runtime crate, as
//! `#[photon::remote]`, `#[photon::actor]` and `#[photon::main]`: the code they generate refers to
//! `::photon`, so the program must depend on the `photon` crate under that name.
//!
//! # `#[photon::remote]`: functions that run as tasks
//!
//! ```ignore
//! #[photon::remote(num_cpus = 1, resources(tpu = 1, "accelerator:A100" = 0.5), max_retries = 3)]
//! pub fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! let sum = add::remote(&ctx, 1u64, 2u64);            // ObjectRef<u64>
//! let more = add::remote(&ctx, &sum, 10u64);          // an ObjectRef can be an argument
//! let big = add::remote_with(&ctx, add::options().num_cpus(4.0), 1u64, 2u64);
//! assert_eq!(add(1, 2), 3);                           // still a plain local function
//! ```
//!
//! The function is kept as written; a module of the same name and visibility holds
//! `options()` (the attribute's defaults), `remote(ctx, args...)`, `remote_with(ctx, options,
//! args...)` and `NAME` (`"<module path>::add"`). Each argument of `remote` is any
//! `impl IntoArg<T>`: a `T`, an `ObjectRef<T>` or a `&ObjectRef<T>`.
//!
//! The function may be `async`. Its arguments must be owned, serializable `name: Type` pairs
//! (no references, `impl Trait`, generics or `self`). If it returns `Result<T, E>` (any type
//! whose last path segment is `Result`, such as `anyhow::Result<T>`), the caller gets an
//! `ObjectRef<T>` and an `Err` fails the task with the error's `{:#}` text.
//!
//! Options, all optional: `num_cpus = <number>`, `num_gpus = <number>`,
//! `resources(<name> = <number>, ...)` (a name is an identifier or a string literal),
//! `max_retries = <integer>`, `retry_exceptions = <bool>`, `num_returns = <1 to 8>`. Values
//! must be literals. Per call, `TaskOptions` also takes a `name` (shown in the call's errors).
//!
//! With `num_returns = n` (n > 1) the function returns an n-tuple (or a `Result` of one) and
//! `remote` returns a tuple of n `ObjectRef`s: each value is its own object, fetched, passed on,
//! freed and rebuilt from lineage on its own (Ray's `num_returns`).
//!
//! ```ignore
//! #[photon::remote(num_returns = 2)]
//! pub fn split(rows: Vec<u64>) -> (Vec<u64>, Vec<u64>) { ... }
//!
//! let (even, odd) = split::remote(&ctx, rows);     // (ObjectRef<Vec<u64>>, ObjectRef<Vec<u64>>)
//! ```
//!
//! # `#[photon::actor]`: stateful workers
//!
//! Put the attribute on the type's inherent `impl` block; the type itself needs no attribute
//! (it must be `Send + Sync + 'static`).
//!
//! ```ignore
//! pub struct Counter {
//!     value: u64,
//! }
//!
//! #[photon::actor(num_cpus = 1, max_concurrency = 4)]
//! impl Counter {
//!     pub fn new(start: u64) -> Self {
//!         Counter { value: start }
//!     }
//!     pub fn incr(&mut self, by: u64) -> u64 {
//!         self.value += by;
//!         self.value
//!     }
//!     pub async fn get(&self) -> u64 {
//!         self.value
//!     }
//!     fn helper(&self) {} // private: not callable remotely
//! }
//!
//! let counter = CounterHandle::new(&ctx, 10u64)?;     // starts the actor
//! let named = CounterHandle::new_with(&ctx, CounterHandle::options().name("c"), 0u64)?;
//! let same = CounterHandle::lookup(&ctx, "c")?;
//! let eleven: ObjectRef<u64> = counter.incr(1u64);
//! ```
//!
//! `CounterHandle` (a `Clone` handle) gets, per `pub` constructor `ctor` (an associated fn
//! returning `Self`, or `Result<Self, E>`; at least one is required), `ctor(ctx, args...)` and
//! `ctor_with(ctx, options, args...)`; per `pub` method taking `&self` or `&mut self`, a
//! method returning an `ObjectRef` of its result (`Result` unwrapped as for remote functions);
//! and `CLASS`, `options()`, `lookup(ctx, name)`, `handle()`. `&self` methods of one actor may
//! run concurrently; `&mut self` methods run alone. Items that are not `pub` are kept but not
//! exported; `pub` items that cannot be remote belong in a separate `impl` block.
//!
//! Options: `num_cpus`, `num_gpus`, `resources(...)` as above, `max_restarts = <integer>`,
//! `max_concurrency = <integer, at least 1>`.
//!
//! A method may carry `#[photon::method(num_returns = <1 to 8>, max_retries = <integer>)]`:
//! `num_returns` as for remote functions (the handle method returns a tuple of refs), and
//! `max_retries`, how often a call is sent again when the actor's worker dies while it runs and
//! the actor restarts (Ray's `max_task_retries`; default 0: it fails with `ActorDied`). Each
//! method `m` also gets `m_with(options, args...)` (a `MethodOptions`, e.g. with a `name` for
//! its errors) and `m_options()` (its defaults).
//!
//! # `#[photon::main]`: the worker entry point
//!
//! ```ignore
//! #[photon::main]
//! fn main() -> anyhow::Result<()> {
//!     let ctx = photon::Context::connect(...)?;
//!     ...
//! }
//! ```
//!
//! Workers run the program's own binary, so `main` must first let a worker process go to its
//! loop: the macro inserts `::photon::worker_entry();` as the first statement. It takes a plain
//! `fn main`; with `#[tokio::main]`, write that attribute above `#[photon::main]`.

mod actor;
mod main_attr;
mod options;
mod remote;
mod signature;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;

/// Makes a free function callable as a remote task; see the [crate docs](crate).
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(remote::expand_remote, attr, item)
}

/// Makes a type's inherent `impl` block an actor class with a typed `<Type>Handle`; see the
/// [crate docs](crate).
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(actor::expand_actor, attr, item)
}

/// Options of one actor method, read by `#[photon::actor]` (which removes it); see the
/// [crate docs](crate). Anywhere else it is an error.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "#[photon::method] goes on a `pub` method inside an impl block marked #[photon::actor]",
    )
    .to_compile_error();
    quote::quote!(#error #item).into()
}

/// Makes `fn main` start with `::photon::worker_entry()`; see the [crate docs](crate).
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(main_attr::expand_main, attr, item)
}

/// Runs an expansion; on error, emits the error next to the unchanged item so that the rest of
/// the crate still sees the item and reports no follow-on errors.
fn finish(
    expand: fn(TokenStream2, TokenStream2) -> syn::Result<TokenStream2>,
    attr: TokenStream,
    item: TokenStream,
) -> TokenStream {
    let item = TokenStream2::from(item);
    match expand(attr.into(), item.clone()) {
        Ok(out) => out.into(),
        Err(error) => {
            let mut out = error.into_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
