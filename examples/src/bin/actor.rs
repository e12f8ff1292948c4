//! A stateful actor: a bank account whose deposits run in call order in its
//! own worker process, looked up by name, and killed.
//!
//! `cargo run --release -p photon-examples --bin actor`

use photon::{Config, Error, ObjectRef};

/// The actor's state lives in its worker process.
pub struct Account {
    owner: String,
    balance: i64,
}

#[photon::actor(max_restarts = 1)]
impl Account {
    /// Opens an account.
    pub fn open(owner: String) -> Self {
        Account { owner, balance: 0 }
    }

    /// Adds `amount`; returns the new balance.
    pub fn deposit(&mut self, amount: i64) -> i64 {
        self.balance += amount;
        self.balance
    }

    /// Takes `amount` out, unless that would overdraw.
    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        if amount > self.balance {
            return Err(format!(
                "{} has {} and cannot withdraw {amount}",
                self.owner, self.balance
            ));
        }
        self.balance -= amount;
        Ok(self.balance)
    }

    /// The balance.
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

#[photon::main]
fn main() -> photon::Result<()> {
    let ctx = photon::init(Config::default())?;
    let account = AccountHandle::open_with(
        &ctx,
        AccountHandle::options().name("alice"),
        "alice".to_string(),
    )?;
    // Calls from one driver run in order: the balances count up 1..=100.
    let balances: Vec<ObjectRef<i64>> = (0..100).map(|_| account.deposit(1i64)).collect();
    let last = *ctx.get_all(&balances)?.last().expect("100 deposits");
    println!("after 100 deposits of 1: {last}");

    // Anyone in the cluster can find the account by name.
    let same = AccountHandle::lookup(&ctx, "alice")?;
    match ctx.get(&same.withdraw(1_000i64)) {
        Err(Error::TaskFailed { message, .. }) => println!("refused: {message}"),
        other => println!("unexpected: {other:?}"),
    }
    println!("balance: {}", ctx.get(&same.balance())?);

    ctx.kill(account.handle())?;
    match ctx.get(&account.balance()) {
        Err(err @ Error::ActorDied { .. }) => println!("after kill: {err}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
