//! loom models of the runtime's protocols (built only with `RUSTFLAGS="--cfg chorus_loom"`).
//!
//! Run: `RUSTFLAGS="--cfg chorus_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p chorus-core --lib --release`
//! (`scripts/test`, which `.ci/run` calls, runs them as their own step; each model's run time is
//! noted there).

mod loom_alloc;
mod loom_completion;
mod loom_event_pool;
mod loom_slots;
mod loom_thread_cache;
