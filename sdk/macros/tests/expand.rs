//! End to end: the macros' expansions compiled against a mock runtime (tests/support/mock.rs),
//! with every call making the round trip through the registered worker-side glue.

extern crate self as photon;

#[path = "support/mock.rs"]
mod mock;
pub use mock::*;

/// Public, so that `missing_docs` checks the generated items too.
pub mod app {
    use serde::{Deserialize, Serialize};

    /// A user type that the generated module must see through `use super::*`.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Point {
        /// Across.
        pub x: i64,
        /// Down.
        pub y: i64,
    }

    #[photon::remote(num_cpus = 1, num_gpus = 0.25, resources(tpu = 2, "accel:A100" = 0.5))]
    /// Adds.
    pub fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    /// Moves diagonally.
    #[photon::remote]
    pub async fn shift(mut p: Point, by: i64) -> Point {
        tokio::task::yield_now().await;
        p.x += by;
        p.y += by;
        p
    }

    #[photon::remote(max_retries = 2, retry_exceptions = true)]
    /// Parses.
    pub fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }

    #[photon::remote]
    fn ping() {}

    /// Quotient and remainder: two returns.
    #[photon::remote(num_returns = 2)]
    pub fn div_rem(a: u64, b: u64) -> Result<(u64, u64), String> {
        if b == 0 {
            return Err("division by zero".into());
        }
        Ok((a / b, a % b))
    }

    /// Argument names that the generated callers use themselves.
    #[photon::remote]
    pub(crate) fn clash(ctx: String, options: u8, args: u8) -> String {
        format!("{ctx}{options}{args}")
    }

    /// Calls the private `ping` remotely.
    pub fn call_private(ctx: &crate::Context) -> Result<(), String> {
        ping::remote(ctx).get()
    }

    /// A counter with a log.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Counter {
        value: u64,
        log: Vec<String>,
    }

    #[photon::actor(num_cpus = 0.5, max_concurrency = 2)]
    impl Counter {
        /// Starts at `start`.
        pub fn new(start: u64) -> Self {
            Counter {
                value: start,
                log: Vec::new(),
            }
        }

        /// Starts at the parsed `text`.
        pub fn from_text(text: String) -> Result<Self, std::num::ParseIntError> {
            Ok(Counter::new(text.parse()?))
        }

        /// Starts with a log.
        pub async fn with_log(start: u64, log: Vec<String>) -> Counter {
            Counter { value: start, log }
        }

        /// Adds `by`.
        pub fn incr(&mut self, by: u64) -> u64 {
            self.value += by;
            self.log.push(self.helper());
            self.value
        }

        /// The value.
        pub async fn get(&self) -> u64 {
            tokio::task::yield_now().await;
            self.value
        }

        /// Adds `by`, slowly.
        pub async fn add_async(&mut self, by: u64) -> u64 {
            tokio::task::yield_now().await;
            self.value += by;
            self.value
        }

        /// A copy.
        pub fn snapshot(&self) -> Self {
            self.clone()
        }

        /// Fails above `limit`.
        pub fn check(&self, limit: u64) -> anyhowish::Result<()> {
            if self.value > limit {
                Err(anyhowish::Error(format!("{} > {limit}", self.value)))
            } else {
                Ok(())
            }
        }

        /// The value and its log: two returns; sent again once after a restart.
        #[photon::method(num_returns = 2, max_retries = 1)]
        pub fn parts(&self) -> (u64, Vec<String>) {
            (self.value, self.log.clone())
        }

        /// Back to zero.
        pub fn reset(&mut self) {
            self.value = 0;
        }

        fn helper(&self) -> String {
            format!("now {}", self.value)
        }
    }

    /// An actor with no methods.
    #[derive(Default)]
    pub struct Idle;

    #[photon::actor]
    impl Idle {
        /// The only constructor.
        pub fn new() -> Self {
            Idle
        }
    }

    /// A crate with its own `Result` alias, like `anyhow`.
    pub mod anyhowish {
        /// An error.
        #[derive(Debug)]
        pub struct Error(pub String);
        impl std::fmt::Display for Error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "checked: {}", self.0)
            }
        }
        /// Its result.
        pub type Result<T> = std::result::Result<T, Error>;
    }
}

use app::{Counter, CounterHandle, IdleHandle, Point, add, clash, parse, shift};
use mock::__private::ArgData;

fn arg<T: serde::Serialize>(value: T) -> ArgData {
    ArgData(serde_json::to_vec(&value).unwrap())
}

#[test]
fn remote_fn_stays_local_and_runs_remotely() {
    assert_eq!(add(1, 2), 3);
    let ctx = Context::default();
    let sum = add::remote(&ctx, 1u64, 2u64);
    assert_eq!(sum.get(), Ok(3));
    // ObjectRefs, owned or borrowed, are arguments too.
    assert_eq!(add::remote(&ctx, &sum, sum.get().unwrap()).get(), Ok(6));
    assert_eq!(add::remote(&ctx, sum, 10u64).get(), Ok(13));
    assert_eq!(add::NAME, "expand::app::add");
    let tasks = ctx.tasks.lock().unwrap();
    assert_eq!(tasks[0].0, "expand::app::add");
    assert_eq!(
        tasks[0].1,
        TaskOptions::new()
            .num_cpus(1.0)
            .num_gpus(0.25)
            .resource("tpu", 2.0)
            .resource("accel:A100", 0.5)
    );
}

#[test]
fn options_can_be_overridden() {
    let ctx = Context::default();
    let options = add::options().num_cpus(4.0);
    assert_eq!(
        add::remote_with(&ctx, options.clone(), 2u64, 2u64).get(),
        Ok(4)
    );
    assert_eq!(ctx.tasks.lock().unwrap()[0].1, options);
    assert_eq!(
        parse::options(),
        TaskOptions::new().max_retries(2).retry_exceptions(true)
    );
}

#[test]
fn async_fns_and_user_types() {
    let ctx = Context::default();
    let moved = shift::remote(&ctx, Point { x: 1, y: 2 }, 10i64);
    assert_eq!(moved.get(), Ok(Point { x: 11, y: 12 }));
}

#[test]
fn result_fns_give_the_ok_value_or_the_error_text() {
    let ctx = Context::default();
    let ok: ObjectRef<u32> = parse::remote(&ctx, "42".to_owned());
    assert_eq!(ok.get(), Ok(42));
    let err = parse::remote(&ctx, "x".to_owned()).get().unwrap_err();
    assert_eq!(err, "invalid digit found in string");
}

#[test]
fn unit_fns_private_fns_and_clashing_argument_names() {
    let ctx = Context::default();
    assert_eq!(app::call_private(&ctx), Ok(()));
    assert_eq!(
        clash::remote(&ctx, "a".to_owned(), 1u8, 2u8).get(),
        Ok("a12".to_owned())
    );
}

#[test]
fn worker_side_reports_bad_calls_by_name() {
    let ctx = Context::default();
    let err = ctx.invoke(add::NAME, vec![arg(1u64)]).unwrap_err();
    assert_eq!(err, "expand::app::add takes 2 arguments, got 1");
    let err = ctx
        .invoke(add::NAME, vec![arg(1u64), arg("two")])
        .unwrap_err();
    assert!(
        err.starts_with("cannot decode argument `b` of expand::app::add:"),
        "{err}"
    );
}

#[test]
fn actor_constructors_and_methods() {
    let ctx = Context::default();
    assert_eq!(CounterHandle::CLASS, "expand::app::Counter");
    let counter = CounterHandle::new(&ctx, 10u64).unwrap();
    assert_eq!(counter.incr(5u64).get(), Ok(15));
    assert_eq!(counter.get().get(), Ok(15));
    assert_eq!(counter.add_async(counter.get()).get(), Ok(30));
    let snapshot: ObjectRef<Counter> = counter.snapshot();
    assert_eq!(snapshot.get().unwrap().incr(0), 30);
    assert_eq!(counter.check(100u64).get(), Ok(()));
    assert_eq!(counter.check(1u64).get(), Err("checked: 30 > 1".to_owned()));
    assert_eq!(counter.reset().get(), Ok(()));
    // Clones share the actor.
    assert_eq!(counter.clone().get().get(), Ok(0));

    let actors = ctx.actors.lock().unwrap();
    assert_eq!(actors[0].0, "expand::app::Counter");
    assert_eq!(actors[0].1, "new");
    assert_eq!(
        actors[0].2,
        ActorOptions::new().num_cpus(0.5).max_concurrency(2)
    );
}

#[test]
fn other_constructors_and_lookup() {
    let ctx = Context::default();
    let logged = CounterHandle::with_log(&ctx, 1u64, vec!["start".to_owned()]).unwrap();
    assert_eq!(logged.incr(1u64).get(), Ok(2));
    let snapshot = logged.snapshot().get().unwrap();
    let expected = serde_json::json!({ "value": 2, "log": ["start", "now 2"] });
    assert_eq!(serde_json::to_value(snapshot).unwrap(), expected);

    let named =
        CounterHandle::from_text_with(&ctx, CounterHandle::options().name("seven"), "7".to_owned())
            .unwrap();
    assert_eq!(named.get().get(), Ok(7));
    let found = CounterHandle::lookup(&ctx, "seven").unwrap();
    assert_eq!(found.incr(1u64).get(), Ok(8));
    assert_eq!(named.get().get(), Ok(8));

    let err = CounterHandle::from_text(&ctx, "seven".to_owned())
        .err()
        .unwrap();
    assert_eq!(err.0, "invalid digit found in string");

    IdleHandle::new_with(&ctx, IdleHandle::options().name("idle")).unwrap();
    let err = CounterHandle::lookup(&ctx, "idle").err().unwrap();
    assert_eq!(
        err.0,
        "idle is a expand::app::Idle, not a expand::app::Counter"
    );
}

#[test]
fn unknown_methods_and_bad_arguments_fail_the_call() {
    let ctx = Context::default();
    let counter = CounterHandle::new(&ctx, 0u64).unwrap();
    let missing: ObjectRef<u64> = counter.handle().call("helper", vec![]);
    assert_eq!(
        missing.get(),
        Err("actor class expand::app::Counter has no method `helper`".into())
    );
    let wrong: ObjectRef<u64> = counter
        .handle()
        .call("incr", vec![IntoArg::<String>::into_arg("x".to_owned())]);
    let err = wrong.get().unwrap_err();
    assert!(
        err.starts_with("cannot decode argument `by` of expand::app::Counter::incr:"),
        "{err}"
    );
    let idle = IdleHandle::new(&ctx).unwrap();
    let missing: ObjectRef<()> = idle.handle().call("anything", vec![]);
    assert_eq!(
        missing.get(),
        Err("actor class expand::app::Idle has no method `anything`".into())
    );
}

#[test]
fn several_returns_come_back_as_separate_refs() {
    let ctx = Context::default();
    let (quotient, remainder) = app::div_rem::remote(&ctx, 17u64, 5u64);
    assert_eq!((quotient.get(), remainder.get()), (Ok(3), Ok(2)));
    let (quotient, remainder) = app::div_rem::remote(&ctx, 1u64, 0u64);
    assert_eq!(quotient.get(), Err("division by zero".to_string()));
    assert_eq!(remainder.get(), Err("division by zero".to_string()));

    let counter = app::CounterHandle::new(&ctx, 4u64).unwrap();
    counter.incr(1u64).get().unwrap();
    let (value, log) = counter.parts();
    assert_eq!(value.get(), Ok(5));
    assert_eq!(log.get().unwrap().len(), 1);
    let named = MethodOptions::new().name("snap");
    let (value, _) = counter.parts_with(named.clone());
    assert_eq!(value.get(), Ok(5));
    assert_eq!(
        app::CounterHandle::parts_options(),
        MethodOptions::new().max_retries(1)
    );
    let calls = counter.handle().calls.lock().unwrap().clone();
    assert_eq!(
        calls[1..],
        [
            ("parts", MethodOptions::new().max_retries(1)),
            ("parts", named)
        ]
    );
    assert_eq!(calls[0], ("incr", MethodOptions::new()));
}
