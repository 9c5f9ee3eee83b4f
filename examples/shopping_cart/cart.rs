//! The cart: one product with a fixed stock, and which sessions hold a unit.
//!
//! Every change goes through [`Broadcaster::modify`], so the stock check, the
//! cart update and the version bump happen in one step: the count never
//! leaves `[0, inventory]`, and a no-op (adding twice, removing what is not
//! there) publishes nothing.
//!
//! [`Store`] is the seam for other backends: a variant per store, each with
//! the same three operations (`apply`, `snapshot`, `close`) and a local
//! broadcaster that the long polls wait on.

use std::collections::HashSet;

use longpoll::{Broadcaster, Epoch, Version};
use parking_lot::Mutex;

/// What every page shows and every long poll carries: the remaining count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stock {
    pub(crate) count: u32,
}

/// What a visitor can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Add,
    Remove,
}

impl Action {
    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "add" => Some(Action::Add),
            "remove" => Some(Action::Remove),
            _ => None,
        }
    }
}

/// The state seen by one session, all read at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CartState {
    pub(crate) count: u32,
    pub(crate) version: Version,
    pub(crate) epoch: Epoch,
    pub(crate) in_cart: bool,
}

/// A cart action that changed nothing and cannot succeed as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CartError {
    /// `add` with nothing left; the state at the time of the refusal.
    #[error("sold out")]
    SoldOut(CartState),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Closed,
    /// The shared store (Redis) did not answer or refused: nothing changed.
    #[error("the cart store is unavailable")]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis fails so
    Unavailable,
}

/// Where cart state lives. In process today; a shared store (one inventory
/// for several instances) is another variant with the same operations.
pub(crate) enum Store {
    Memory(MemoryStore),
    /// Shared by every instance on one Redis (`--redis`).
    #[cfg(feature = "redis")]
    Redis(super::redis_store::RedisStore),
}

impl Store {
    /// The broadcaster the long polls of this instance wait on.
    pub(crate) fn broadcaster(&self) -> &Broadcaster<Stock> {
        match self {
            Store::Memory(m) => &m.stock,
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.broadcaster(),
        }
    }

    /// Adds or removes this session's unit, atomically with the version bump.
    pub(crate) async fn apply(
        &self,
        session: &str,
        action: Action,
    ) -> Result<CartState, CartError> {
        match self {
            Store::Memory(m) => m.apply(session, action),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.apply(session, action).await,
        }
    }

    /// The count, version and epoch now, and whether `session` holds a unit.
    pub(crate) async fn snapshot(&self, session: &str) -> Result<CartState, CartError> {
        match self {
            Store::Memory(m) => Ok(m.snapshot(session)),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.snapshot(session).await,
        }
    }

    /// Stops changes and answers every held long poll (`503`).
    pub(crate) fn close(&self) {
        self.broadcaster().close();
    }
}

/// Cart state in this process.
pub(crate) struct MemoryStore {
    stock: Broadcaster<Stock>,
    /// Sessions holding a unit; at most `inventory` of them. Every change
    /// takes this lock first and publishes while holding it, so the set and
    /// the published count always agree.
    carts: Mutex<HashSet<String>>,
}

impl MemoryStore {
    /// `inventory` units, none in a cart; at most `max_waiters` long polls.
    pub(crate) fn new(inventory: u32, max_waiters: usize) -> MemoryStore {
        MemoryStore {
            stock: Broadcaster::builder()
                .max_waiters(max_waiters)
                .build(Stock { count: inventory }),
            carts: Mutex::new(HashSet::new()),
        }
    }

    fn apply(&self, session: &str, action: Action) -> Result<CartState, CartError> {
        let mut carts = self.carts.lock();
        let in_cart = carts.contains(session);
        let published = match (action, in_cart) {
            // Already as asked: nothing to publish.
            (Action::Add, true) | (Action::Remove, false) => None,
            (Action::Add, false) => self
                .stock
                .modify(|s| s.count.checked_sub(1).map(|count| Stock { count }))
                .map_err(|_| CartError::Closed)?,
            (Action::Remove, true) => self
                .stock
                .modify(|s| Some(Stock { count: s.count + 1 }))
                .map_err(|_| CartError::Closed)?,
        };
        match (action, published) {
            (Action::Add, Some(_)) => {
                carts.insert(session.to_owned());
            }
            (Action::Remove, Some(_)) => {
                carts.remove(session);
            }
            (Action::Add, None) if !in_cart => {
                return Err(CartError::SoldOut(self.state(&carts, session)));
            }
            _ => {}
        }
        Ok(self.state(&carts, session))
    }

    fn snapshot(&self, session: &str) -> CartState {
        let carts = self.carts.lock();
        self.state(&carts, session)
    }

    /// Reads the published state; the caller holds the carts lock, so no
    /// change can come between it and the set.
    fn state(&self, carts: &HashSet<String>, session: &str) -> CartState {
        let current = self.stock.current();
        CartState {
            count: current.value().count,
            version: current.version(),
            epoch: current.epoch(),
            in_cart: carts.contains(session),
        }
    }
}
