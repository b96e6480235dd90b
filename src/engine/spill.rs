//! Spilling settled contacts out of memory.
//!
//! A contact must stay reachable for the whole correction horizon (7 days by default):
//! a late survey, QA score or repeat contact can still change its facts. Held in
//! memory, even packed, that is every contact of the last week: 20 M contacts for a
//! centre taking 120 000 an hour, gigabytes of RAM, and all of it in every checkpoint.
//! So a contact that is *closed* (ended or abandoned) and unchanged for
//! `spill_after` of event time is handed to a [`Spill`] (its packed bytes and the few
//! fields the engine looks it up by) and dropped from the engine's maps; an event or a
//! re-derivation that reaches it takes it back.
//!
//! Invariant kept by the engine (`Engine::spill_settled`, `Engine::ensure_loaded`):
//! a customer's held contacts are either all in memory or all spilled. FCR compares a
//! contact's offer with its customer's other offers, and this way the in-memory
//! customer index is always complete for the contacts being derived, without a look-up
//! in the spill on every event.
//!
//! The engine stays pure: it calls the trait, and what is behind it decides where the
//! bytes live. [`MemSpill`] keeps them in a map (tests, and the reference the store's
//! implementation is checked against); a store-backed implementation must make
//! [`Spill::take`] see everything [`Spill::put`] handed it, committed or not.

use super::{ContactKey, CustomerKey, HashMap};
use crate::event::Millis;

/// A contact out of memory: [`super::Contact`]'s packed bytes and its look-up fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpilledContact {
    pub key: ContactKey,
    pub customer: Option<CustomerKey>,
    pub first_offer: Option<Millis>,
    /// Latest event time of the contact: it is forgotten once the correction horizon
    /// has passed this (as in memory).
    pub last_ts: Millis,
    /// The contact's events and facts as `Contact::pack` encoded them. Shared: a
    /// spill batch and the uncommitted changes that answer reads until it lands hold
    /// the same bytes (a flush in `replay` spills tens of thousands of contacts).
    pub body: std::sync::Arc<[u8]>,
}

/// The spill's changes since it was last persisted: what a store-backed spill writes
/// in the partition's next commit transaction, beside the checkpoint, so that the two
/// describe the same moment (a contact is in one or the other).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpillBatch {
    /// Forget every contact whose `last_ts` is before this (the correction horizon).
    pub expire_before: Option<Millis>,
    /// Contacts taken back into memory (they are in the checkpoint now).
    pub deletes: Vec<ContactKey>,
    /// Contacts spilled (new, or replacing an earlier spill of the same key).
    pub puts: Vec<SpilledContact>,
}

impl SpillBatch {
    pub fn is_empty(&self) -> bool {
        self.expire_before.is_none() && self.deletes.is_empty() && self.puts.is_empty()
    }
}

/// Where spilled contacts are kept. Answers must be complete: a contact put and not
/// yet taken back or expired must be returned by [`Spill::take`] and, through its
/// customer, by [`Spill::take_customer`]. An implementation that can fail (a store)
/// must retry until it can answer: the engine cannot apply an event without the
/// contact it belongs to, and skipping it would silently lose the event.
pub trait Spill: Send {
    /// Keep `c` (replacing an earlier spill of the same key).
    fn put(&mut self, c: SpilledContact);
    /// Remove and return the contact `key`, if spilled.
    fn take(&mut self, key: ContactKey) -> Option<SpilledContact>;
    /// Remove and return every spilled contact of `customer`.
    fn take_customer(&mut self, customer: CustomerKey) -> Vec<SpilledContact>;
    /// Forget the contacts whose `last_ts` is before `before` (the correction horizon).
    fn expire(&mut self, before: Millis);
    /// Contacts held.
    fn len(&self) -> usize;
    /// The changes to persist with the checkpoint being taken now; `None` for a spill
    /// that does not persist (then a checkpoint cannot restore what it holds, and only
    /// an engine that hands the spill object itself over may continue from it).
    /// Until [`Spill::finish`], the batch's contacts must stay readable.
    fn prepare(&mut self) -> Option<SpillBatch> {
        None
    }
    /// The prepared batch was committed (`true`), or not: then its changes are kept
    /// and go with the next prepared batch.
    fn finish(&mut self, _committed: bool) {}
    /// A hint: the next events will look up these contacts and customers (any of
    /// them may be held in memory or never spilled). A spill behind a round trip
    /// fetches the ones it may hold together, so that the look-ups that follow are
    /// answered from memory. Answers must stay exactly what they would be without it.
    fn prefetch(&mut self, _keys: &[ContactKey], _customers: &[CustomerKey]) {}
    /// The error that made answers unreliable since it was last asked, if any: a
    /// spill whose failures will not heal by retrying (local files) answers on, and
    /// its user must stop before anything answered after the error is stored.
    fn failure(&mut self) -> Option<std::io::Error> {
        None
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`Spill`] in memory: saves nothing, but behaves as any spill must.
#[derive(Default)]
pub struct MemSpill {
    contacts: HashMap<ContactKey, SpilledContact>,
    customers: HashMap<CustomerKey, Vec<ContactKey>>,
    /// Contacts taken back so far (tests check that spilled contacts were reached).
    pub taken: u64,
}

impl MemSpill {
    /// Whether contact `key` is held.
    pub fn holds(&self, key: ContactKey) -> bool {
        self.contacts.contains_key(&key)
    }
}

impl Spill for MemSpill {
    fn put(&mut self, c: SpilledContact) {
        if let Some(k) = c.customer {
            let list = self.customers.entry(k).or_default();
            if !list.contains(&c.key) {
                list.push(c.key);
            }
        }
        self.contacts.insert(c.key, c);
    }

    fn take(&mut self, key: ContactKey) -> Option<SpilledContact> {
        let c = self.contacts.remove(&key)?;
        self.taken += 1;
        if let Some(k) = c.customer
            && let Some(list) = self.customers.get_mut(&k)
        {
            list.retain(|x| *x != key);
            if list.is_empty() {
                self.customers.remove(&k);
            }
        }
        Some(c)
    }

    fn take_customer(&mut self, customer: CustomerKey) -> Vec<SpilledContact> {
        let keys = self.customers.remove(&customer).unwrap_or_default();
        self.taken += keys.len() as u64;
        keys.iter()
            .filter_map(|k| self.contacts.remove(k))
            .collect()
    }

    fn expire(&mut self, before: Millis) {
        let customers = &mut self.customers;
        self.contacts.retain(|key, c| {
            let keep = c.last_ts >= before;
            if !keep
                && let Some(k) = c.customer
                && let Some(list) = customers.get_mut(&k)
            {
                list.retain(|x| x != key);
                if list.is_empty() {
                    customers.remove(&k);
                }
            }
            keep
        });
    }

    fn len(&self) -> usize {
        self.contacts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: u128, customer: Option<u128>, last_ts: Millis) -> SpilledContact {
        SpilledContact {
            key,
            customer,
            first_offer: Some(last_ts - 10),
            last_ts,
            body: vec![key as u8].into(),
        }
    }

    #[test]
    fn mem_spill_takes_by_key_and_customer_and_expires() {
        let mut s = MemSpill::default();
        s.put(c(1, Some(9), 100));
        s.put(c(2, Some(9), 200));
        s.put(c(3, None, 50));
        s.put(c(4, Some(8), 300));
        assert_eq!(s.len(), 4);
        assert_eq!(s.take(1), Some(c(1, Some(9), 100)));
        assert_eq!(s.take(1), None);
        assert_eq!(s.take_customer(9), vec![c(2, Some(9), 200)]);
        assert!(s.take_customer(9).is_empty());
        s.expire(60);
        assert_eq!(s.len(), 1, "contact 3 (last 50) expired, 4 kept");
        s.expire(301);
        assert!(s.is_empty());
        assert!(
            s.take_customer(8).is_empty(),
            "the customer index forgot 4 too"
        );
    }
}
