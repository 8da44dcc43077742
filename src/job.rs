//! A ticket in flight: accepted, not yet committed. The front end (or the
//! log's replay) makes a [`Job`], the writers take it, and its end is
//! reported where it is awaited: the `ack = commit` request gets the
//! [`Stored`] outcome, the log learns the sequence number is committed, and
//! dropping the job gives its admission permit back.

use tokio::sync::oneshot;

use crate::admission::Permit;
use crate::idempotency::TicketOnItsWay;
use crate::ticket::NewTicket;
use crate::wal::{Logged, WalRecord};

/// One accepted ticket on its way to the database.
#[derive(Debug)]
pub struct Job {
    pub ticket: NewTicket,
    /// Given back (dropped) once the ticket's fate is known.
    pub permit: Permit,
    /// Answered with the outcome when `ack = commit`.
    pub reply: Option<oneshot::Sender<Stored>>,
    /// The ticket's write-ahead log record, reported committed after the flush.
    pub wal_seq: Option<u64>,
    /// For the first ticket of an idempotency key: dropped with the job,
    /// which tells the idempotency window the writers are done with it.
    pub on_its_way: Option<TicketOnItsWay>,
}

/// What became of a ticket the writers took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed in PostgreSQL.
    Committed,
    /// PostgreSQL refused it even as `invalid` with its raw bytes alone (a
    /// schema problem, not the ticket's): not stored.
    Refused,
    /// Not written: the service stopped while the database was unavailable.
    /// A ticket in the write-ahead log is written at the next start.
    Abandoned,
}

impl Job {
    /// A job for a ticket that is not in the log and whose sender does not
    /// wait for the commit (`ack = memory`).
    pub fn new(ticket: NewTicket, permit: Permit) -> Job {
        Job { ticket, permit, reply: None, wal_seq: None, on_its_way: None }
    }

    /// A job whose sender waits for the outcome (`ack = commit`).
    pub fn awaited(ticket: NewTicket, permit: Permit) -> (Job, oneshot::Receiver<Stored>) {
        let (reply, outcome) = oneshot::channel();
        (Job { ticket, permit, reply: Some(reply), wal_seq: None, on_its_way: None }, outcome)
    }

    /// The job carries the key's [`TicketOnItsWay`], if its ticket is the
    /// first of a key.
    pub fn on_its_way(mut self, on_its_way: Option<TicketOnItsWay>) -> Job {
        self.on_its_way = on_its_way;
        self
    }

    /// Whether the writers may give this ticket up at shutdown without
    /// losing an acknowledged ticket: it is in the log (replayed at the next
    /// start) or its sender still waits for an answer (and gets a refusal).
    pub fn may_be_abandoned(&self) -> bool {
        self.wal_seq.is_some() || self.reply.is_some()
    }

    /// Tells the waiting sender, if any, what became of the ticket.
    pub fn answer(&mut self, outcome: Stored) {
        if let Some(reply) = self.reply.take() {
            // The client may have gone away; the outcome stands all the same.
            let _ = reply.send(outcome);
        }
    }
}

impl Logged for Job {
    fn logged_as(&mut self, seq: u64) {
        self.wal_seq = Some(seq);
    }
}

/// A ticket's write-ahead log record: what the next start needs to store it
/// under the same id.
impl From<&NewTicket> for WalRecord {
    fn from(ticket: &NewTicket) -> WalRecord {
        WalRecord {
            id: ticket.id,
            received_at: ticket.received_at,
            idempotency_key: ticket.idempotency_key.clone(),
            raw: ticket.raw.clone(),
        }
    }
}
