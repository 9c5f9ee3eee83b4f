//! Moving a slot, with its keys, from one master to another.

use super::{admin, Cluster, Shard};

impl Cluster {
    /// Moves `slot`, with every key in it, to the master at `to`, as
    /// `redis-cli --cluster reshard` does; clients may keep using the slot
    /// meanwhile (they get `ASK` while keys move, `MOVED` after). Returns
    /// how many keys moved.
    ///
    /// # Panics
    ///
    /// If `to` is not a master, already owns the slot, or a step fails.
    pub(crate) async fn move_slot(&self, slot: u16, to: &str) -> usize {
        let migration = self.begin_migration(slot, to).await;
        let mut moved = 0;
        loop {
            let n = migration.move_keys(100).await;
            if n == 0 {
                break;
            }
            moved += n;
        }
        migration.finish().await;
        moved
    }

    /// Starts moving `slot` to the master at `to`: marks it `IMPORTING` on
    /// `to` and `MIGRATING` on its owner, and moves no key yet.
    pub(crate) async fn begin_migration(&self, slot: u16, to: &str) -> Migration<'_> {
        let shards = self.shards().await;
        let from = shards
            .iter()
            .find(|s| s.owns(slot))
            .unwrap_or_else(|| panic!("no master owns slot {slot}"))
            .clone();
        let target = shards
            .iter()
            .find(|s| s.master == to)
            .unwrap_or_else(|| panic!("{to} is not a master: {shards:?}"))
            .clone();
        assert_ne!(from.master, target.master, "{to} already owns slot {slot}");
        admin::<String>(
            &target.master,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from.id),
        )
        .await;
        admin::<String>(
            &from.master,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&target.id),
        )
        .await;
        Migration {
            cluster: self,
            slot,
            from,
            to: target,
        }
    }
}

/// A slot on its way from one master to another: see
/// [`Cluster::begin_migration`].
pub(crate) struct Migration<'a> {
    cluster: &'a Cluster,
    slot: u16,
    from: Shard,
    to: Shard,
}

impl Migration<'_> {
    /// The slot being moved.
    pub(crate) fn slot(&self) -> u16 {
        self.slot
    }

    /// The shard the slot leaves.
    pub(crate) fn from(&self) -> &Shard {
        &self.from
    }

    /// The shard the slot goes to.
    pub(crate) fn to(&self) -> &Shard {
        &self.to
    }

    /// Moves up to `at_most` keys of the slot (`MIGRATE ... KEYS`); returns
    /// how many moved (0 once the slot is empty on its old master).
    pub(crate) async fn move_keys(&self, at_most: usize) -> usize {
        let keys: Vec<Vec<u8>> = admin(
            &self.from.master,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(self.slot)
                .arg(at_most),
        )
        .await;
        if keys.is_empty() {
            return 0;
        }
        let (host, port) = self.to.master.rsplit_once(':').expect("host:port");
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg(host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys);
        let _: String = admin(&self.from.master, &migrate).await;
        keys.len()
    }

    /// Moves the keys left, gives the slot to its new master on every
    /// master (new owner first, then the old, then the others), and waits
    /// until every node agrees.
    pub(crate) async fn finish(self) {
        while self.move_keys(100).await > 0 {}
        let setslot = || {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.to.id);
            cmd
        };
        admin::<String>(&self.to.master, &setslot()).await;
        admin::<String>(&self.from.master, &setslot()).await;
        for shard in self.cluster.shards().await {
            if shard.master != self.to.master && shard.master != self.from.master {
                admin::<String>(&shard.master, &setslot()).await;
            }
        }
        let (slot, to) = (self.slot, self.to.master.clone());
        self.cluster
            .settle("the moved slot is agreed on", |shards| {
                shards.iter().any(|s| s.master == to && s.owns(slot))
            })
            .await;
    }
}
