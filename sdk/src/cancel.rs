//! Cancellation from the worker's side: each call pushed to a worker gets a
//! token when it arrives, so a cancel that comes while it waits in the
//! worker's queue stops it from starting, and one that comes while it runs
//! interrupts it at its next await (or, for synchronous code, when it looks
//! at [`is_cancelled`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

tokio::task_local! {
    static CURRENT: CancellationToken;
}

/// True inside a call its owner has cancelled
/// ([`Context::cancel`](crate::Context::cancel)): long synchronous code
/// checks it between steps and returns early; async code is interrupted at
/// its next await anyway. False outside a call.
pub fn is_cancelled() -> bool {
    CURRENT
        .try_with(CancellationToken::is_cancelled)
        .unwrap_or(false)
}

/// Runs a call's future with `token` as the one [`is_cancelled`] reads.
pub(crate) async fn scope<F: Future>(token: CancellationToken, call: F) -> F::Output {
    CURRENT.scope(token, call).await
}

/// Cancels for calls this worker has not read yet (still queued on their
/// stream behind a running call, or on their way) are kept until the call
/// arrives; past this many, the oldest go (those of calls that finished
/// before their cancel came).
const EARLY_CANCELS_KEPT: usize = 10_000;

/// The tokens of the calls a worker holds, by task id.
#[derive(Default)]
pub(crate) struct Calls {
    tokens: Mutex<HashMap<Vec<u8>, CallToken>>,
}

struct CallToken {
    token: CancellationToken,
    /// When a cancel came for a call not seen yet.
    early: Option<Instant>,
}

impl Calls {
    /// A call arrived: its token (already cancelled if its cancel came first).
    pub(crate) fn arrived(&self, task_id: &[u8]) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .entry(task_id.to_vec())
            .or_insert_with(|| CallToken {
                token: CancellationToken::new(),
                early: None,
            })
            .token
            .clone()
    }

    /// The call finished (or never will run here).
    pub(crate) fn finished(&self, task_id: &[u8]) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
    }

    /// The owner cancels `task_id`.
    pub(crate) fn cancel(&self, task_id: &[u8]) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let early = tokens.values().filter(|call| call.early.is_some()).count();
        if early >= EARLY_CANCELS_KEPT {
            let oldest = tokens
                .iter()
                .filter_map(|(id, call)| Some((call.early?, id.clone())))
                .min();
            if let Some((_, id)) = oldest {
                tokens.remove(&id);
            }
        }
        match tokens.get(task_id) {
            Some(call) => call.token.cancel(),
            None => {
                let token = CancellationToken::new();
                token.cancel();
                let early = Some(Instant::now());
                tokens.insert(task_id.to_vec(), CallToken { token, early });
            }
        }
    }
}
