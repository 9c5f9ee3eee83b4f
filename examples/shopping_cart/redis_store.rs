//! The cart in Redis (`--redis URL`): several instances behind one load
//! balancer share one inventory and one version sequence.
//!
//! The count is a [`longpoll::redis`] channel; the sessions holding a unit
//! are a Redis set next to it. `add` and `remove` are one Lua snippet each
//! way (`CART` below): the stock check, the set update, the version bump
//! and the publish to every instance happen in one atomic step in Redis, so
//! no interleaving of requests on any number of instances oversells.
//!
//! | key (`P` = `--redis-prefix`) | holds                                     |
//! |------------------------------|-------------------------------------------|
//! | `Pstate:stock`               | the channel: epoch, version, count        |
//! | `Pcart:sessions`             | the sessions with a unit in their cart    |
//!
//! If Redis loses its data (a restart without persistence), the stock
//! starts again from `--inventory` with empty carts under a new epoch, and
//! every page resynchronises. While Redis is unreachable, held long polls
//! keep waiting (or time out with `204`) and cart changes answer `503`.

use std::sync::Arc;

use super::{App, Args};

/// Builds the app on the Redis at `url`.
#[cfg(feature = "redis")]
pub(crate) async fn app(args: &Args, url: &str) -> std::io::Result<Arc<App>> {
    let store = RedisStore::connect(url, &args.redis_prefix, args.inventory, args.max_waiters)
        .await
        .map_err(|e| std::io::Error::other(format!("redis at {url}: {e}")))?;
    Ok(Arc::new(App::with_store(
        super::cart::Store::Redis(store),
        args.inventory,
        args.poll_timeout,
    )))
}

/// Without the `redis` feature there is no Redis store: say how to get one.
#[cfg(not(feature = "redis"))]
pub(crate) async fn app(_args: &Args, _url: &str) -> std::io::Result<Arc<App>> {
    Err(std::io::Error::other(
        "--redis needs the `redis` feature: \
         cargo run --example shopping_cart --features http,redis -- --redis URL",
    ))
}

#[cfg(feature = "redis")]
pub(crate) use imp::RedisStore;

#[cfg(feature = "redis")]
mod imp {
    use longpoll::redis::{Backplane, BackplaneError, Channel, Codec, DecodeError, ModifyScript};
    use longpoll::Broadcaster;

    use super::super::cart::{Action, CartError, CartState, Stock};

    /// One snippet for the three operations. `value` is the count as
    /// stored; `KEYS[1]` the set of sessions holding a unit; `ARGV[1]` the
    /// session; `ARGV[2]` `add`, `remove` or `read`. Returns the new count
    /// (or nil: no change) and whether the session holds a unit afterwards,
    /// or `sold_out`.
    const CART: &str = r#"
        local left = tonumber(value)
        local held = redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1
        if ARGV[2] == 'add' and not held then
            if left <= 0 then return nil, 'sold_out' end
            redis.call('SADD', KEYS[1], ARGV[1])
            return left - 1, 'in_cart'
        elseif ARGV[2] == 'remove' and held then
            redis.call('SREM', KEYS[1], ARGV[1])
            return left + 1, 'not_in_cart'
        end
        -- `read`, or already as asked: nothing to publish.
        if held then return nil, 'in_cart' end
        return nil, 'not_in_cart'
    "#;

    /// The count as decimal text, so that the snippet can do arithmetic on it.
    impl Codec for Stock {
        fn encode(&self) -> Vec<u8> {
            self.count.encode()
        }

        fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
            u32::decode(bytes).map(|count| Stock { count })
        }
    }

    /// Cart state in Redis, shared by every instance with the same URL and
    /// prefix.
    pub(crate) struct RedisStore {
        stock: Channel<Stock>,
        sessions: String,
        script: ModifyScript,
    }

    impl RedisStore {
        /// Joins the shop under `prefix`, creating it with `inventory` units
        /// if Redis does not hold it yet.
        pub(crate) async fn connect(
            url: &str,
            prefix: &str,
            inventory: u32,
            max_waiters: usize,
        ) -> Result<RedisStore, BackplaneError> {
            let backplane = Backplane::builder(url).prefix(prefix).connect().await?;
            let stock = backplane
                .channel_builder("stock")
                .max_waiters(max_waiters)
                .open(Stock { count: inventory })
                .await?;
            Ok(RedisStore {
                stock,
                sessions: format!("{prefix}cart:sessions"),
                script: ModifyScript::new(CART),
            })
        }

        pub(crate) fn broadcaster(&self) -> &Broadcaster<Stock> {
            self.stock.broadcaster()
        }

        pub(crate) async fn apply(
            &self,
            session: &str,
            action: Action,
        ) -> Result<CartState, CartError> {
            let op = match action {
                Action::Add => "add",
                Action::Remove => "remove",
            };
            self.run(session, op).await
        }

        pub(crate) async fn snapshot(&self, session: &str) -> Result<CartState, CartError> {
            self.run(session, "read").await
        }

        async fn run(&self, session: &str, op: &str) -> Result<CartState, CartError> {
            let done = self
                .stock
                .modify(&self.script)
                .key(&self.sessions)
                .arg(session)
                .arg(op)
                .invoke()
                .await
                .map_err(|e| {
                    if e.is_closed() {
                        CartError::Closed
                    } else {
                        eprintln!("redis: {e}");
                        CartError::Unavailable
                    }
                })?;
            let update = done.update();
            let state = CartState {
                count: update.value().count,
                version: update.version(),
                epoch: update.epoch(),
                in_cart: done.note() == b"in_cart",
            };
            if done.note() == b"sold_out" {
                return Err(CartError::SoldOut(state));
            }
            Ok(state)
        }
    }
}
