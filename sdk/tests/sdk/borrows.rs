//! References inside values: an object passed inside a struct (an argument
//! or a return value) lives while any process or return value holds a
//! reference to it and is freed after the last one drops (the head's and
//! the stores' counts are checked, not only values); an actor handle travels
//! inside a value; a borrower whose owner ended reads `OwnerDied`.

use std::time::Duration;

use libtest_mimic::Failed;
use photon::{Context, ObjectRef};
use serde::{Deserialize, Serialize};

use crate::functions::*;
use crate::{check, embedded, wait_until};

/// A value holding a reference.
#[derive(Serialize, Deserialize)]
pub struct Shared {
    pub label: String,
    pub data: ObjectRef<Vec<u8>>,
}

/// A reference to a value that holds a reference.
#[derive(Serialize, Deserialize)]
pub struct Outer {
    pub inner: ObjectRef<Shared>,
}

/// Keeps what it is given.
pub struct Keeper {
    kept: Option<Shared>,
    outer: Option<Outer>,
}

fn sum_of(ctx: &Context, shared: &Shared) -> Result<u64, String> {
    let bytes = ctx.get(&shared.data).map_err(|e| e.to_string())?;
    Ok(bytes.iter().map(|&b| u64::from(b)).sum())
}

#[photon::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper {
            kept: None,
            outer: None,
        }
    }

    /// Keeps `shared`; the sum of the bytes it refers to.
    pub fn keep(&mut self, shared: Shared) -> Result<u64, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let sum = sum_of(&ctx, &shared)?;
        self.kept = Some(shared);
        Ok(sum)
    }

    /// The sum of the kept object's bytes, read again.
    pub fn read(&self) -> Result<u64, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let shared = self.kept.as_ref().ok_or("nothing kept")?;
        sum_of(&ctx, shared)
    }

    /// `len` bytes of 9.
    pub fn bytes(&self, len: u64) -> Vec<u8> {
        vec![9u8; len as usize]
    }

    /// Keeps a reference to a value that itself holds a reference.
    pub fn keep_outer(&mut self, outer: Outer) {
        self.outer = Some(outer);
    }

    /// Reads the kept value, then the object it refers to; their sum.
    pub fn read_outer(&self) -> Result<u64, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let outer = self.outer.as_ref().ok_or("nothing kept")?;
        let shared = ctx.get(&outer.inner).map_err(|e| e.to_string())?;
        sum_of(&ctx, &shared)
    }

    /// Drops what it kept; how many objects this worker references then.
    pub fn drop_it(&mut self) -> Result<usize, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        self.kept = None;
        Ok(ctx.object_count())
    }
}

/// Sums the bytes `shared` refers to.
#[photon::remote]
pub fn sum_inside(shared: Shared) -> Result<String, String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    Ok(format!("{}={}", shared.label, sum_of(&ctx, &shared)?))
}

/// Puts `len` bytes of 4 and returns them inside a value.
#[photon::remote]
pub fn make_shared(len: u64) -> Result<Shared, String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    let data = ctx
        .put(&vec![4u8; len as usize])
        .map_err(|e| e.to_string())?;
    Ok(Shared {
        label: "made".into(),
        data,
    })
}

/// A counter reached through a handle inside a value.
#[derive(Serialize, Deserialize)]
pub struct Team {
    pub counter: CounterHandle,
}

/// Adds `by` to the team's counter; its value then.
#[photon::remote]
pub fn bump(team: Team, by: u64) -> Result<u64, String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    ctx.get(&team.counter.incr(by)).map_err(|e| e.to_string())
}

/// Makes objects of its own and lends them, inside values, to keepers.
pub struct Lender {
    kept: Vec<ObjectRef<Vec<u8>>>,
}

#[photon::actor]
impl Lender {
    pub fn new() -> Self {
        Lender { kept: Vec::new() }
    }

    /// Puts `len` bytes of 2 and has `keeper` keep them, keeping its own
    /// reference too if `keep`; the keeper's sum.
    pub fn lend(&mut self, keeper: KeeperHandle, len: u64, keep: bool) -> Result<u64, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let data = ctx
            .put(&vec![2u8; len as usize])
            .map_err(|e| e.to_string())?;
        if keep {
            self.kept.push(data.clone());
        }
        let shared = Shared {
            label: "lent".into(),
            data,
        };
        ctx.get(&keeper.keep(shared)).map_err(|e| e.to_string())
    }
}

fn objects_in_stores(ctx: &Context) -> u64 {
    ctx.cluster_nodes()
        .map(|nodes| nodes.iter().map(|n| n.object_store_objects).sum())
        .unwrap_or(u64::MAX)
}

/// Waits until the stores hold `baseline` objects again (their heartbeats
/// report every 500 ms).
fn stores_back_to(ctx: &Context, baseline: u64) -> Result<(), Failed> {
    let back = wait_until(Duration::from_secs(10), || {
        objects_in_stores(ctx) == baseline
    });
    check(
        back,
        format!(
            "stores hold {} objects, {baseline} before",
            objects_in_stores(ctx)
        ),
    )
}

/// A 2 MB object inside a struct given to 3 actors outlives the driver's
/// reference, is read by each, and leaves the store only after the last
/// actor drops it; the head counts its borrowers all along.
pub fn an_object_inside_a_struct_lives_until_its_last_borrower_drops_it() -> Result<(), Failed> {
    let ctx = embedded();
    let keepers = (0..3)
        .map(|_| KeeperHandle::new_with(&ctx, KeeperHandle::options().num_cpus(0.0)))
        .collect::<photon::Result<Vec<_>>>()?;
    let baseline = objects_in_stores(&ctx);
    let len = 2_000_000u64;
    let data = ctx.put(&vec![5u8; len as usize])?;
    let id = data.id();
    for (i, keeper) in keepers.iter().enumerate() {
        let shared = Shared {
            label: format!("keeper {i}"),
            data: data.clone(),
        };
        check(
            ctx.get(&keeper.keep(shared))? == 5 * len,
            "each keeper reads it",
        )?;
    }
    drop(data);
    // The driver tells the head in the background.
    let kept = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(id)
            .is_ok_and(|h| h.borrowers.len() == 3 && h.owner_released && !h.nodes.is_empty())
    });
    check(
        kept,
        format!(
            "3 borrowers keep it after the driver dropped it: {:?}",
            ctx.object_holders(id)?
        ),
    )?;
    check(ctx.get(&keepers[0].read())? == 5 * len, "still readable")?;
    for keeper in &keepers[..2] {
        check(
            ctx.get(&keeper.drop_it())? == 0,
            "the keeper references nothing",
        )?;
    }
    let holders = ctx.object_holders(id)?;
    check(
        holders.borrowers.len() == 1 && !holders.nodes.is_empty(),
        format!("one borrower left, one copy kept: {holders:?}"),
    )?;
    check(ctx.get(&keepers[2].read())? == 5 * len, "the last reads it")?;
    ctx.get(&keepers[2].drop_it())?;
    let freed = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(id)
            .is_ok_and(|h| h.nodes.is_empty() && h.borrowers.is_empty())
    });
    check(
        freed,
        format!(
            "freed after the last borrower: {:?}",
            ctx.object_holders(id)?
        ),
    )?;
    stores_back_to(&ctx, baseline)
}

/// An object a task put and returned inside a value lives while the return
/// value holds it, then while the driver holds the reference it read from
/// it, then while a task it lent it to runs; then it is freed.
pub fn an_object_returned_inside_a_value_lives_until_nothing_holds_it() -> Result<(), Failed> {
    let ctx = embedded();
    let baseline = objects_in_stores(&ctx);
    let len = 2_000_000u64;
    let outer = make_shared::remote(&ctx, len);
    let shared = ctx.get(&outer)?;
    let id = shared.data.id();
    check(
        ctx.get(&shared.data)? == vec![4u8; len as usize],
        "the driver reads the returned object",
    )?;
    // The worker that made it let go after its reply.
    let held = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(id).is_ok_and(|h| {
            h.holding_objects == vec![outer.id()] && h.borrowers == vec![0] && h.owner_released
        })
    });
    check(
        held,
        format!(
            "held by the return value and the driver: {:?}",
            ctx.object_holders(id)?
        ),
    )?;
    drop(outer);
    let driver_only = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(id)
            .is_ok_and(|h| h.holding_objects.is_empty() && h.borrowers == vec![0])
    });
    check(
        driver_only,
        format!("held by the driver alone: {:?}", ctx.object_holders(id)?),
    )?;
    check(
        ctx.get(&sum_inside::remote(&ctx, shared))? == format!("made={}", 4 * len),
        "lent on to a task",
    )?;
    let freed = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(id).is_ok_and(|h| {
            h.nodes.is_empty() && h.borrowers.is_empty() && h.holding_objects.is_empty()
        })
    });
    check(
        freed,
        format!("freed once nothing holds it: {:?}", ctx.object_holders(id)?),
    )?;
    stores_back_to(&ctx, baseline)
}

/// A value holding a return value that holds a reference keeps both alive
/// after the driver drops its own; and a reference to an earlier call's
/// result on the same actor, inside a value, does not hold up that actor.
pub fn references_to_references_and_to_the_same_actors_results() -> Result<(), Failed> {
    let ctx = embedded();
    let keeper = KeeperHandle::new_with(&ctx, KeeperHandle::options().num_cpus(0.0))?;
    let len = 1_000_000u64;
    let made = make_shared::remote(&ctx, len);
    ctx.get(&keeper.keep_outer(Outer {
        inner: made.clone(),
    }))?;
    let inner_id = ctx.get(&made)?.data.id();
    drop(made);
    // Held by the return value the keeper holds, not by the driver.
    let held = wait_until(Duration::from_secs(10), || {
        ctx.object_holders(inner_id)
            .is_ok_and(|h| h.borrowers.is_empty() && h.holding_objects.len() == 1)
    });
    check(
        held,
        format!(
            "the inner object is held by the kept value: {:?}",
            ctx.object_holders(inner_id)?
        ),
    )?;
    check(
        ctx.get(&keeper.read_outer())? == 4 * len,
        "the keeper reads through both references",
    )?;
    let pending = keeper.bytes(1_000u64);
    let sum = keeper.keep(Shared {
        label: "same actor".into(),
        data: pending,
    });
    check(
        ctx.get_timeout(&sum, Duration::from_secs(30))? == 9_000,
        "a reference to the same actor's earlier result",
    )?;
    Ok(())
}

/// Small and unfinished objects inside a value reach a task too: the driver
/// stores a small one before lending it, and waits for an unfinished one;
/// a reference not lent (the driver's own) is freed as before.
pub fn small_and_pending_objects_inside_values_are_lent() -> Result<(), Failed> {
    let ctx = embedded();
    let small = ctx.put(&vec![1u8; 10])?;
    let pending = make_bytes::remote(&ctx, 1_000u64, 3u8);
    let a = sum_inside::remote(
        &ctx,
        Shared {
            label: "small".into(),
            data: small.clone(),
        },
    );
    let b = sum_inside::remote(
        &ctx,
        Shared {
            label: "pending".into(),
            data: pending.clone(),
        },
    );
    check(ctx.get(&a)? == "small=10", "a small object inside a value")?;
    check(ctx.get(&b)? == "pending=3000", "an unfinished one")?;
    let (small_id, pending_id) = (small.id(), pending.id());
    check(
        !ctx.object_holders(small_id)?.nodes.is_empty(),
        "the small object was stored to be lent",
    )?;
    drop((small, pending));
    let freed = wait_until(Duration::from_secs(10), || {
        [small_id, pending_id].iter().all(|id| {
            ctx.object_holders(*id)
                .is_ok_and(|h| h.nodes.is_empty() && h.borrowers.is_empty())
        })
    });
    check(freed, "both freed once nobody holds them")?;
    // A reference inside a put value is refused, saying so.
    let inner = ctx.put(&vec![1u8; 10])?;
    let refused = ctx
        .put(&Shared {
            label: "in a put".into(),
            data: inner,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    check(
        refused.contains("not inside a put value"),
        format!("a reference inside a put value: {refused}"),
    )?;
    Ok(())
}

/// An actor handle inside a value calls the same actor.
pub fn actor_handles_travel_inside_values() -> Result<(), Failed> {
    let ctx = embedded();
    let counter = CounterHandle::new_with(&ctx, CounterHandle::options().num_cpus(0.0), 10u64)?;
    let first = bump::remote(
        &ctx,
        Team {
            counter: counter.clone(),
        },
        5u64,
    );
    check(ctx.get(&first)? == 15, "the task called the actor")?;
    let second = bump::remote(
        &ctx,
        Team {
            counter: counter.clone(),
        },
        1u64,
    );
    check(ctx.get(&second)? == 16, "in order")?;
    check(
        ctx.get(&counter.value())? == 16,
        "the driver sees the same actor",
    )?;
    Ok(())
}

/// When the worker that owns a lent object ends while it still holds the
/// object, the object goes with it, and its borrower's read fails with
/// `OwnerDied`, naming the owner; an object it had released outlives it
/// while borrowed.
pub fn a_borrower_whose_owner_ended_reads_owner_died() -> Result<(), Failed> {
    let ctx = embedded();
    let keeper = KeeperHandle::new_with(&ctx, KeeperHandle::options().num_cpus(0.0))?;
    let survivor = KeeperHandle::new_with(&ctx, KeeperHandle::options().num_cpus(0.0))?;
    let lender = LenderHandle::new_with(&ctx, LenderHandle::options().num_cpus(0.0))?;
    let len = 1_500_000u64;
    check(
        ctx.get(&lender.lend(keeper.clone(), len, true))? == 2 * len,
        "the keeper read the lent object",
    )?;
    check(
        ctx.get(&lender.lend(survivor.clone(), len, false))? == 2 * len,
        "the other keeper read the released one",
    )?;
    check(ctx.get(&keeper.read())? == 2 * len, "and keeps it")?;
    ctx.kill(lender.handle())?;
    let mut last = String::new();
    let failed = wait_until(Duration::from_secs(15), || match ctx.get(&keeper.read()) {
        Ok(_) => false,
        Err(e) => {
            last = e.to_string();
            true
        }
    });
    check(
        failed && last.contains("its owner, the worker with owner tag") && last.contains("ended"),
        format!("the borrower's read after its owner ended: {last}"),
    )?;
    check(
        ctx.get(&survivor.read())? == 2 * len,
        "the object the owner had released outlived it",
    )?;
    Ok(())
}
