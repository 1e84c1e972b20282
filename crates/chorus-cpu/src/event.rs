//! CPU events: a (stream, target) pair, plus a timestamp for timing events.
//!
//! # State
//! `rec` is `None` (never recorded: complete) or the stream and command count of the last
//! record. `seq` counts records and resets; a timestamp command carries the `seq` of the record
//! that enqueued it and is ignored if the event has been recorded again or reset since, so a
//! recycled event never shows its previous owner's time or completion.
//!
//! # Fields
//! `state` under `BACKEND_EVENT` (taken before a stream's queue lock when recording).

use crate::stream::{Command, StreamShared};
use chorus_sync::{rank, Arc, RankedMutex};
use std::time::Instant;

#[derive(Default)]
struct State {
    rec: Option<(Arc<StreamShared>, u64)>,
    seq: u64,
    time: Option<Instant>,
}

pub(crate) struct EventShared {
    state: RankedMutex<State>,
    timing: bool,
}

impl EventShared {
    pub(crate) fn stamp(&self, seq: u64) {
        let mut s = self.state.lock();
        if s.seq == seq {
            s.time = Some(Instant::now());
        }
    }
}

/// The backend's `Event`.
pub struct CpuEvent(pub(crate) Arc<EventShared>);

impl std::fmt::Debug for CpuEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEvent")
            .field("timing", &self.0.timing)
            .finish()
    }
}

impl CpuEvent {
    pub(crate) fn new(timing: bool) -> Self {
        Self(Arc::new(EventShared {
            state: RankedMutex::new(rank::BACKEND_EVENT, State::default()),
            timing,
        }))
    }

    pub(crate) fn record(&self, stream: &Arc<StreamShared>) {
        let mut s = self.0.state.lock();
        s.seq += 1;
        s.time = None;
        let target = if self.0.timing {
            stream.push(Command::Timestamp(Arc::clone(&self.0), s.seq))
        } else {
            stream.enqueued()
        };
        s.rec = Some((Arc::clone(stream), target));
    }

    /// The stream and target of the last record.
    pub(crate) fn target(&self) -> Option<(Arc<StreamShared>, u64)> {
        self.0.state.lock().rec.clone()
    }

    pub(crate) fn reset(&self) {
        let mut s = self.0.state.lock();
        s.seq += 1;
        s.rec = None;
        s.time = None;
    }

    pub(crate) fn time(&self) -> Option<Instant> {
        if !self.0.timing {
            return None;
        }
        let s = self.0.state.lock();
        match &s.rec {
            Some((stream, t)) if stream.is_done(*t) => s.time,
            _ => None,
        }
    }
}
