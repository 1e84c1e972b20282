//! Fault injection: make chosen backend calls fail, to test that every failure stays local.
//!
//! Compiled in debug builds and with the `fault-injection` feature, never in a release build by
//! default. A [`FaultPlan`] set on a device (`Device::inject_faults`) makes the runtime's
//! wrapper around the backend call fail, before the backend is called, at these sites
//! ([`FaultSite`]):
//! - `Launch`: a kernel or graph launch (the op returns `Error::Device`, its output is dropped);
//! - `Alloc`: a device allocation of a segment, which fails as a real one does, with
//!   `BackendError::OutOfMemory` (the allocator's out-of-memory path: it releases cached
//!   memory, synchronizes, retries, and then returns `Error::OutOfMemory`);
//! - `Record`: an event record (cross-stream ordering: the op fails; an allocator fence: the
//!   free waits for the stream instead; a user's `Event::record` fails);
//! - `HostCallback`: a host callback (`Stream::on_complete` fails; an exclusive slot's release
//!   waits for its stream instead; a graph's executable form is dropped after a wait);
//! - `Read`: a copy back to the host (`to_vec` fails).
//!
//! Each site counts its calls from 1. A rule fails the `n`th call ([`FaultPlan::nth`]), or
//! each call whose hash of (seed, site, call number) is 0 modulo `k`
//! ([`FaultPlan::one_in`]): a seeded 1-in-`k` that is the same for the same sequence of calls.
//! [`FaultPlan::lose_at`] makes the `n`th call of a site lose the device instead
//! (`BackendError::Lost`, as a fatal device fault would), which puts the device in the `Lost`
//! state for good. An injected failure is `BackendError::Injected { site, call }` (but for
//! `Alloc`, above).
//!
//! On CUDA the wrapper is the runtime's call into chorus-cuda, which calls the driver: every
//! driver call of a site goes through it, so the failure is seen exactly where a driver
//! failure would be. Faults made on the device itself (an index out of range) need no
//! injection: the op proptests and `bad_input` tests make them.

// Without fault injection (a release build without the feature) only the public types remain
// in use: the runtime's wrapper never fails.
#![cfg_attr(
    not(any(debug_assertions, feature = "fault-injection")),
    allow(dead_code)
)]

use chorus_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use chorus_sync::{rank, RankedMutex};

/// A kind of backend call that can be made to fail. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultSite {
    /// A kernel or graph launch.
    Launch,
    /// A device allocation of a segment.
    Alloc,
    /// An event record.
    Record,
    /// A host callback enqueued on a stream.
    HostCallback,
    /// A copy from the device to the host.
    Read,
}

impl FaultSite {
    /// Every site.
    pub const ALL: [FaultSite; 5] = [
        FaultSite::Launch,
        FaultSite::Alloc,
        FaultSite::Record,
        FaultSite::HostCallback,
        FaultSite::Read,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FaultSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            FaultSite::Launch => "launch",
            FaultSite::Alloc => "allocation",
            FaultSite::Record => "event record",
            FaultSite::HostCallback => "host callback",
            FaultSite::Read => "read",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Nth(u64),
    OneIn { k: u64, seed: u64 },
    LoseAt(u64),
}

/// Which calls fail. See the module docs.
///
/// # Examples
/// ```
/// use chorus_core::{Error, FaultPlan, FaultSite, Tensor};
/// # let device = chorus_cpu::device()?;
/// let x = Tensor::full(&device, &[4], 1.0)?;
/// device.inject_faults(FaultPlan::new().nth(FaultSite::Launch, 1));
/// assert!(matches!(x.relu(), Err(Error::Device { .. }))); // the 1st launch fails
/// assert_eq!(x.relu()?.to_vec::<f32>()?, vec![1.0; 4]); // the stream goes on
/// device.inject_faults(FaultPlan::new());
/// # Ok::<(), chorus_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    rules: Vec<(FaultSite, Rule)>,
}

impl FaultPlan {
    /// No faults.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Fails the `n`th call of `site` (counted from 1).
    pub fn nth(mut self, site: FaultSite, n: u64) -> FaultPlan {
        self.rules.push((site, Rule::Nth(n)));
        self
    }

    /// Fails a seeded one in `k` calls of `site` (`k` 0 or 1: every call).
    pub fn one_in(mut self, site: FaultSite, k: u64, seed: u64) -> FaultPlan {
        self.rules.push((site, Rule::OneIn { k: k.max(1), seed }));
        self
    }

    /// Makes the `n`th call of `site` lose the device (a fatal device fault).
    pub fn lose_at(mut self, site: FaultSite, n: u64) -> FaultPlan {
        self.rules.push((site, Rule::LoseAt(n)));
        self
    }
}

/// What an injected call does.
pub(crate) enum Injected {
    /// Fail it with `BackendError::Injected`.
    Fail(u64),
    /// Lose the device.
    Lose(u64),
}

/// A device's injection state: the plan, and each site's calls and failures since it was set.
#[derive(Debug)]
pub(crate) struct Faults {
    /// Whether a plan with rules is set (the only thing a call reads when none is).
    active: AtomicBool,
    plan: RankedMutex<FaultPlan>,
    calls: [AtomicU64; 5],
    fired: [AtomicU64; 5],
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults {
            active: AtomicBool::new(false),
            plan: RankedMutex::new(rank::FAULT_PLAN, FaultPlan::new()),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            fired: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Replaces the plan and restarts every site's count.
    pub(crate) fn set(&self, plan: FaultPlan) {
        let mut p = self.plan.lock();
        for c in self.calls.iter().chain(&self.fired) {
            c.store(0, Ordering::Relaxed);
        }
        self.active.store(!plan.rules.is_empty(), Ordering::Release);
        *p = plan;
    }

    /// Failures injected at each site since the plan was set.
    pub(crate) fn fired(&self) -> Vec<(FaultSite, u64)> {
        FaultSite::ALL
            .iter()
            .map(|&s| (s, self.fired[s.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a call of `site` and says whether it is to fail.
    pub(crate) fn hit(&self, site: FaultSite) -> Option<Injected> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let call = self.calls[site.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let plan = self.plan.lock();
        let injected = plan.rules.iter().find_map(|&(s, rule)| {
            if s != site {
                return None;
            }
            match rule {
                Rule::Nth(n) => (n == call).then_some(Injected::Fail(call)),
                Rule::OneIn { k, seed } => mix(seed, site.index() as u64, call)
                    .is_multiple_of(k)
                    .then_some(Injected::Fail(call)),
                Rule::LoseAt(n) => (n == call).then_some(Injected::Lose(call)),
            }
        });
        if injected.is_some() {
            self.fired[site.index()].fetch_add(1, Ordering::Relaxed);
        }
        injected
    }
}

/// A 64-bit mix of three words (splitmix64's finalizer over their combination).
fn mix(seed: u64, site: u64, call: u64) -> u64 {
    let mut z =
        seed ^ site.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ call.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
