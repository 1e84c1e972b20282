//! loom models of the batching protocol (built only with `RUSTFLAGS="--cfg chorus_loom"`).
//!
//! Run: `RUSTFLAGS="--cfg chorus_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p chorus-batch --lib --release`
//! (`scripts/test` runs them as their own step; each model's run time is noted there).

mod loom_queue;
