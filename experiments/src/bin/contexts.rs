//! The raw driver's rate from many threads, with no chorus in between: is the fall of a
//! many-thread forward past the cores the driver's (BENCHMARKS.md, "Is the MLP's fall … the
//! driver's?"), and does it go away when the threads' streams live in different contexts?
//!
//! No chorus runtime here: each thread makes its own stream (and pinned word), then repeats an
//! "iteration" shaped like a batch-1 forward: `LAUNCHES` launches of a kernel that adds one to
//! the thread's own device word, a 4-byte copy of that word to pinned host memory and a
//! synchronization of the stream. After the clock the word must equal the number of launches
//! (the check that every launch ran, in whatever context).
//!
//! Waiting (`CONTEXTS_WAIT`): `yield` (default) `cuStreamSynchronize` in a context made with
//! `CU_CTX_SCHED_YIELD`; `block` a blocking-sync event recorded and waited on; `hybrid` as
//! chorus does (spin while no more threads than cores spin, else the event; `CONTEXTS_SPINNERS=N`
//! spins at most N instead of the cores); `every32` no copy
//! wait, a stream synchronization every 32 iterations (the launch path alone).
//!
//! Gate (`CONTEXTS_GATE=K`): at most K threads inside the driver at once, the others asleep on
//! a semaphore (are 64 runnable threads on 16 cores what makes the driver slower?). `K` alone:
//! a permit per driver call, a `yield` wait holding its permit (a `hybrid` wait spins with a
//! permit if one is free, else sleeps on the event without one); `K:iter`: one permit from an
//! iteration's first launch to the end of its wait. Unset or empty: no gate.
//!
//! Layouts (`LAYOUT` argument, comma-separated):
//! - `primary`: every stream in the device's primary context (what chorus does today);
//! - `green:G`: G green contexts, each given every SM of the device, thread `t` in `t % G`;
//!   streams by `cuGreenCtxStreamCreate`, the module loaded in each green context, the words
//!   allocated in the primary context (green contexts share its memory);
//! - `gshare:G`: as `green:G` with the module of the primary context (do they share modules?);
//! - `greenp:G`: as `gshare:G` with the primary context current while launching and waiting
//!   (what a runtime that keeps one current context would do);
//! - `ctx:C`: C ordinary contexts (`cuCtxCreate`), each with its own module and memory (far
//!   slower; in one run with 64 threads over 2 of them a thread's word counted 2 launches fewer
//!   than it made, which the check reports by panicking; not understood, not chorus's path).
//!
//! `contexts probe` instead prints which calls work on a green context's stream with the
//! primary context current and the primary context's events, functions and memory.
//!
//! Rounds: `SECONDS` > 0 runs every thread until a shared deadline and counts what finished
//! (steady state); `SECONDS` = 0 gives each thread `max(50, 2000 / threads)` iterations and
//! times from the start barrier to the last thread's end, as `chorus bench` and PyTorch's script
//! time their MLP rows (so the start of 64 threads and the tail of the slowest count too).
//!
//! `cargo run --release -p chorus-experiments --bin contexts -- [LAYOUTS] [THREADS] [SECONDS]`
//! (default `primary,green:2,green:4,ctx:2,ctx:4,gshare:2`, `1,4,8,16,32,64`, `0.3`) prints
//! iterations per second of each layout and thread count, and `SKIPPED` without a GPU. The
//! GPU job's `raw` step runs `primary` from 1 to 64 threads (`scripts/gpu-job`).

use cudarc::driver::sys::{self, CUcontext, CUdeviceptr, CUfunction, CUresult, CUstream};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
// sync-shim: allowed (a benchmark of the raw driver, outside the runtime and its lock ranks)
#[allow(clippy::disallowed_types)]
use std::sync::{Barrier, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

const LAUNCHES: usize = 4;

/// `CONTEXTS_WAIT`: how a thread waits for its stream after each iteration.
static WAIT: OnceLock<String> = OnceLock::new();

/// Threads spinning in the `hybrid` wait now.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// `CONTEXTS_GATE`: the permits and whether one is held for a whole iteration.
static GATE: OnceLock<Option<(Gate, bool)>> = OnceLock::new();

/// A counting semaphore: `take` sleeps while no permit is free.
#[allow(clippy::disallowed_types)] // see the import
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn take(&self) {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
    }

    fn try_take(&self) -> bool {
        let mut free = self.free.lock().unwrap();
        let got = *free > 0;
        if got {
            *free -= 1;
        }
        got
    }

    fn give(&self) {
        *self.free.lock().unwrap() += 1;
        self.freed.notify_one();
    }
}

/// Runs `f` holding a permit of the per-call gate, if there is one.
fn gated<T>(f: impl FnOnce() -> T) -> T {
    match GATE.get().and_then(Option::as_ref) {
        Some((gate, false)) => {
            gate.take();
            let r = f();
            gate.give();
            r
        }
        _ => f(),
    }
}

const SOURCE: &str = r#"
extern "C" __global__ void bump(unsigned int* word) {
    if (threadIdx.x == 0 && blockIdx.x == 0) { *word += 1; }
}
"#;

fn ok(result: CUresult, what: &str) {
    assert_eq!(result, CUresult::CUDA_SUCCESS, "{what}");
}

/// Where one thread's stream lives: the context to make current and how to make the stream.
#[derive(Clone, Copy)]
struct Place {
    ctx: CUcontext,
    green: sys::CUgreenCtx,
    function: CUfunction,
    /// Whether the thread's words are allocated in `ctx` (else in the primary context).
    own_memory: bool,
    /// Whether the thread launches with the primary context current (else `ctx`).
    launch_in_primary: bool,
}

// SAFETY: driver handles are plain identifiers, valid from any thread that makes the context
// current; the driver synchronizes its own use of them.
unsafe impl Send for Place {}
// SAFETY: as above.
unsafe impl Sync for Place {}

fn load(ptx: &CString) -> CUfunction {
    let mut module = std::ptr::null_mut();
    let mut function = std::ptr::null_mut();
    // SAFETY: a context is current on this thread; `ptx` is NUL-terminated PTX text; the
    // module stays loaded for the process (never unloaded in this program).
    unsafe {
        ok(
            sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void),
            "cuModuleLoadData",
        );
        ok(
            sys::cuModuleGetFunction(&mut function, module, c"bump".as_ptr()),
            "cuModuleGetFunction",
        );
    }
    function
}

/// The places of one layout (contexts made once, kept for the process).
fn places(layout: &str, primary: CUcontext, device: i32, ptx: &CString) -> Vec<Place> {
    // SAFETY: (the whole function) plain driver calls on handles made here or retained in main.
    unsafe {
        ok(sys::cuCtxSetCurrent(primary), "cuCtxSetCurrent");
        let primary_function = load(ptx);
        let (kind, count) = layout.split_once(':').unwrap_or((layout, "1"));
        let count: usize = count.parse().expect("a count after ':'");
        (0..count)
            .map(|_| match kind {
                "primary" => Place {
                    ctx: primary,
                    green: std::ptr::null_mut(),
                    function: primary_function,
                    own_memory: false,
                    launch_in_primary: true,
                },
                "green" | "gshare" | "greenp" => {
                    let mut resource: sys::CUdevResource = std::mem::zeroed();
                    ok(
                        sys::cuDeviceGetDevResource(
                            device,
                            &mut resource,
                            sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
                        ),
                        "cuDeviceGetDevResource",
                    );
                    let mut desc = std::ptr::null_mut();
                    ok(
                        sys::cuDevResourceGenerateDesc(&mut desc, &mut resource, 1),
                        "cuDevResourceGenerateDesc",
                    );
                    let mut green = std::ptr::null_mut();
                    ok(
                        sys::cuGreenCtxCreate(
                            &mut green,
                            desc,
                            device,
                            sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32,
                        ),
                        "cuGreenCtxCreate",
                    );
                    let mut ctx = std::ptr::null_mut();
                    ok(sys::cuCtxFromGreenCtx(&mut ctx, green), "cuCtxFromGreenCtx");
                    let function = if kind == "green" {
                        ok(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
                        let function = load(ptx);
                        ok(sys::cuCtxSetCurrent(primary), "cuCtxSetCurrent");
                        function
                    } else {
                        primary_function
                    };
                    Place {
                        ctx,
                        green,
                        function,
                        own_memory: false,
                        launch_in_primary: kind == "greenp",
                    }
                }
                "ctx" => {
                    let mut ctx = std::ptr::null_mut();
                    ok(
                        sys::cuCtxCreate_v4(
                            &mut ctx,
                            std::ptr::null_mut(),
                            sys::CUctx_flags::CU_CTX_SCHED_YIELD as u32,
                            device,
                        ),
                        "cuCtxCreate",
                    );
                    let function = load(ptx);
                    ok(sys::cuCtxSetCurrent(primary), "cuCtxSetCurrent");
                    Place {
                        ctx,
                        green: std::ptr::null_mut(),
                        function,
                        own_memory: true,
                        launch_in_primary: false,
                    }
                }
                other => panic!("unknown layout {other}"),
            })
            .collect()
    }
}

/// The primary context, to hand to threads.
#[derive(Clone, Copy)]
struct Ctx(CUcontext);

// SAFETY: as for `Place`.
unsafe impl Send for Ctx {}
// SAFETY: as for `Place`.
unsafe impl Sync for Ctx {}

/// Iterations per second of `threads` threads over `places` for `seconds`.
fn round(places: &[Place], primary: Ctx, threads: usize, seconds: f64) -> f64 {
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let place = places[t % places.len()];
                let (start, stop) = (&start, &stop);
                let quota = if seconds > 0.0 {
                    usize::MAX
                } else {
                    (2000 / threads).max(50)
                };
                s.spawn(move || worker(place, primary, start, stop, quota))
            })
            .collect();
        start.wait();
        let began = Instant::now();
        if seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        }
        let counts = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (counts, began.elapsed())
    });
    let (counts, elapsed): (Vec<usize>, Duration) = counts;
    counts.iter().sum::<usize>() as f64 / elapsed.as_secs_f64()
}

/// One thread: make its stream and words, meet the others, iterate until `stop` or `quota`.
fn worker(place: Place, primary: Ctx, start: &Barrier, stop: &AtomicBool, quota: usize) -> usize {
    // SAFETY: (the whole function) the context is made current on this thread before any call;
    // the stream, device word and pinned word are this thread's own and freed at the end after
    // the stream is synchronized; kernel parameters point at a live `CUdeviceptr`.
    unsafe {
        let memory_ctx = if place.own_memory {
            place.ctx
        } else {
            primary.0
        };
        ok(sys::cuCtxSetCurrent(memory_ctx), "cuCtxSetCurrent");
        let mut word: CUdeviceptr = 0;
        ok(sys::cuMemAlloc_v2(&mut word, 4), "cuMemAlloc");
        ok(sys::cuMemsetD32_v2(word, 0, 1), "cuMemsetD32");
        let mut host: *mut c_void = std::ptr::null_mut();
        ok(sys::cuMemAllocHost_v2(&mut host, 4), "cuMemAllocHost");
        ok(sys::cuCtxSetCurrent(place.ctx), "cuCtxSetCurrent");
        let mut stream: CUstream = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        if place.green.is_null() {
            ok(sys::cuStreamCreate(&mut stream, flags), "cuStreamCreate");
        } else {
            ok(
                sys::cuGreenCtxStreamCreate(&mut stream, place.green, flags, 0),
                "cuGreenCtxStreamCreate",
            );
        }
        if place.launch_in_primary {
            ok(sys::cuCtxSetCurrent(primary.0), "cuCtxSetCurrent");
        }
        let iterate = || {
            for _ in 0..LAUNCHES {
                let mut arg = word;
                let mut params = [&mut arg as *mut CUdeviceptr as *mut c_void];
                ok(
                    gated(|| {
                        sys::cuLaunchKernel(
                            place.function,
                            1,
                            1,
                            1,
                            32,
                            1,
                            1,
                            0,
                            stream,
                            params.as_mut_ptr(),
                            std::ptr::null_mut(),
                        )
                    }),
                    "cuLaunchKernel",
                );
            }
            ok(
                gated(|| sys::cuMemcpyDtoHAsync_v2(host, word, 4, stream)),
                "cuMemcpyDtoHAsync",
            );
        };
        let mut event = std::ptr::null_mut();
        let event_flags = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
            | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        ok(sys::cuEventCreate(&mut event, event_flags), "cuEventCreate");
        let sleep = || {
            ok(gated(|| sys::cuEventRecord(event, stream)), "cuEventRecord");
            ok(sys::cuEventSynchronize(event), "cuEventSynchronize");
        };
        let spin = || {
            ok(
                gated(|| sys::cuStreamSynchronize(stream)),
                "cuStreamSynchronize",
            )
        };
        let cores = std::env::var("CONTEXTS_SPINNERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let per_call = match GATE.get().and_then(Option::as_ref) {
            Some((gate, false)) => Some(gate),
            _ => None,
        };
        let wait = |i: usize| match WAIT.get().map_or("yield", String::as_str) {
            "yield" => spin(),
            "block" => sleep(),
            "hybrid" if per_call.is_some() => {
                let gate = per_call.expect("checked");
                if gate.try_take() {
                    ok(sys::cuStreamSynchronize(stream), "cuStreamSynchronize");
                    gate.give();
                } else {
                    sleep()
                }
            }
            "hybrid" => {
                if SPINNING.fetch_add(1, Ordering::Relaxed) < cores {
                    spin()
                } else {
                    sleep()
                }
                SPINNING.fetch_sub(1, Ordering::Relaxed);
            }
            "every32" if i % 32 == 31 => spin(),
            "every32" => {}
            other => panic!("unknown CONTEXTS_WAIT {other}"),
        };
        for i in 0..20 {
            iterate();
            wait(i);
        }
        spin();
        start.wait();
        let whole = match GATE.get().and_then(Option::as_ref) {
            Some((gate, true)) => Some(gate),
            _ => None,
        };
        let mut n = 0;
        while n < quota && !stop.load(Ordering::Relaxed) {
            whole.inspect(|g| g.take());
            iterate();
            wait(n);
            whole.inspect(|g| g.give());
            n += 1;
        }
        spin();
        ok(sys::cuEventDestroy_v2(event), "cuEventDestroy");
        let seen = *(host as *const u32);
        assert_eq!(seen as usize, (n + 20) * LAUNCHES, "every launch ran");
        ok(sys::cuStreamDestroy_v2(stream), "cuStreamDestroy");
        ok(sys::cuCtxSetCurrent(memory_ctx), "cuCtxSetCurrent");
        ok(sys::cuMemFree_v2(word), "cuMemFree");
        ok(sys::cuMemFreeHost(host), "cuMemFreeHost");
        n
    }
}

fn main() {
    // SAFETY: only probes for the library.
    if !unsafe { sys::is_culib_present() } {
        println!("SKIPPED: no CUDA driver");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return probe();
    }
    let layouts = args.get(1).map_or(
        "primary,green:2,green:4,ctx:2,ctx:4,gshare:2",
        String::as_str,
    );
    let threads: Vec<usize> = args
        .get(2)
        .map_or("1,4,8,16,32,64", String::as_str)
        .split(',')
        .map(|t| t.parse().expect("thread counts"))
        .collect();
    let seconds: f64 = args.get(3).map_or(0.3, |s| s.parse().expect("seconds"));
    let wait = std::env::var("CONTEXTS_WAIT").unwrap_or_else(|_| "yield".into());
    WAIT.set(wait).expect("set once");
    let gate = std::env::var("CONTEXTS_GATE")
        .ok()
        .filter(|g| !g.is_empty())
        .map(|g| {
            let (k, whole) = g.split_once(':').map_or((g.as_str(), false), |(k, w)| {
                assert_eq!(w, "iter", "CONTEXTS_GATE=K or K:iter");
                (k, true)
            });
            let k: usize = k.parse().expect("CONTEXTS_GATE=K");
            #[allow(clippy::disallowed_types)] // see the import
            let gate = Gate {
                free: Mutex::new(k),
                freed: Condvar::new(),
            };
            (gate, whole)
        });
    GATE.set(gate).ok().expect("set once");
    let ptx = cudarc::nvrtc::compile_ptx(SOURCE).expect("NVRTC");
    let ptx = CString::new(ptx.to_src()).expect("PTX without NUL");
    let (mut device, mut primary) = (0, std::ptr::null_mut());
    // SAFETY: initialization and retaining the primary context of device 0 for the process.
    unsafe {
        ok(sys::cuInit(0), "cuInit");
        ok(sys::cuDeviceGet(&mut device, 0), "cuDeviceGet");
        let _ =
            sys::cuDevicePrimaryCtxSetFlags_v2(device, sys::CUctx_flags::CU_CTX_SCHED_YIELD as u32);
        ok(
            sys::cuDevicePrimaryCtxRetain(&mut primary, device),
            "cuDevicePrimaryCtxRetain",
        );
    }
    print!("{:>10}", "layout");
    for t in &threads {
        print!("{:>10}", format!("{t} thr"));
    }
    println!("   (iterations/s: {LAUNCHES} launches + copy + sync)");
    for layout in layouts.split(',') {
        let places = places(layout, primary, device, &ptx);
        print!("{layout:>10}");
        for &t in &threads {
            print!("{:>10.0}", round(&places, Ctx(primary), t, seconds));
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        println!();
    }
}

/// Which calls work on a green context's stream with the primary context current, and with
/// handles (events, functions, memory) of the primary context: `contexts probe`.
fn probe() {
    // SAFETY: (the whole function) plain driver calls on handles made here; results are printed,
    // not assumed; every stream is synchronized before the process ends.
    unsafe {
        ok(sys::cuInit(0), "cuInit");
        let mut device = 0;
        ok(sys::cuDeviceGet(&mut device, 0), "cuDeviceGet");
        let mut primary = std::ptr::null_mut();
        ok(
            sys::cuDevicePrimaryCtxRetain(&mut primary, device),
            "retain",
        );
        let ptx = CString::new(cudarc::nvrtc::compile_ptx(SOURCE).unwrap().to_src()).unwrap();
        let places = places("green:1", primary, device, &ptx);
        ok(sys::cuCtxSetCurrent(primary), "cuCtxSetCurrent");
        let function = load(&ptx);
        let green = places[0];
        let show = |what: &str, r: CUresult| println!("{what:<60} {r:?}");
        let mut stream = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        show(
            "cuGreenCtxStreamCreate (primary current)",
            sys::cuGreenCtxStreamCreate(&mut stream, green.green, flags, 0),
        );
        let mut ctx = std::ptr::null_mut();
        show("cuStreamGetCtx", sys::cuStreamGetCtx(stream, &mut ctx));
        println!(
            "  stream's context is the primary: {}, the green's: {}",
            ctx == primary,
            ctx == green.ctx
        );
        let mut word: CUdeviceptr = 0;
        ok(sys::cuMemAlloc_v2(&mut word, 4), "cuMemAlloc");
        ok(sys::cuMemsetD32_v2(word, 0, 1), "memset");
        let mut arg = word;
        let mut params = [&mut arg as *mut CUdeviceptr as *mut c_void];
        let mut launch = |f| {
            sys::cuLaunchKernel(
                f,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        show(
            "launch primary's function on green stream, primary current",
            launch(function),
        );
        let mut event = std::ptr::null_mut();
        ok(sys::cuEventCreate(&mut event, 2), "cuEventCreate");
        show(
            "record primary's event on green stream, primary current",
            sys::cuEventRecord(event, stream),
        );
        show("  cuEventSynchronize", sys::cuEventSynchronize(event));
        let mut other = std::ptr::null_mut();
        ok(sys::cuStreamCreate(&mut other, flags), "cuStreamCreate");
        show(
            "primary stream waits primary's event recorded on green",
            sys::cuStreamWaitEvent(other, event, 0),
        );
        let mut gevent = std::ptr::null_mut();
        ok(sys::cuEventRecord(event, other), "record on primary stream");
        show(
            "green stream waits primary's event",
            sys::cuStreamWaitEvent(stream, event, 0),
        );
        ok(sys::cuCtxSetCurrent(green.ctx), "set green");
        show(
            "create an event with the green context current",
            sys::cuEventCreate(&mut gevent, 2),
        );
        show(
            "record that event on a primary stream, green current",
            sys::cuEventRecord(gevent, other),
        );
        ok(sys::cuCtxSetCurrent(primary), "set primary");
        show(
            "record green's event on a primary stream, primary current",
            sys::cuEventRecord(gevent, other),
        );
        let mut host: *mut c_void = std::ptr::null_mut();
        ok(sys::cuMemAllocHost_v2(&mut host, 4), "cuMemAllocHost");
        show(
            "copy DtoH (primary memory) on green stream, primary current",
            sys::cuMemcpyDtoHAsync_v2(host, word, 4, stream),
        );
        unsafe extern "C" fn noop(_: *mut c_void) {}
        show(
            "host function on green stream",
            sys::cuLaunchHostFunc(stream, Some(noop), std::ptr::null_mut()),
        );
        show(
            "cuStreamSynchronize(green stream), primary current",
            sys::cuStreamSynchronize(stream),
        );
        println!("  word = {} (1 expected)", *(host as *const u32));
        show("cuStreamQuery(green stream)", sys::cuStreamQuery(stream));
        let mut g2 = std::ptr::null_mut();
        show(
            "capture on a green stream: begin",
            sys::cuStreamBeginCapture_v2(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            ),
        );
        show("  launch", launch(function));
        show("  end", sys::cuStreamEndCapture(stream, &mut g2));
        let mut exec = std::ptr::null_mut();
        show(
            "  instantiate",
            sys::cuGraphInstantiateWithFlags(&mut exec, g2, 0),
        );
        show(
            "  launch the graph on the green stream",
            sys::cuGraphLaunch(exec, stream),
        );
        show(
            "  launch the graph on a primary stream",
            sys::cuGraphLaunch(exec, other),
        );
        show("cuCtxSynchronize (primary)", sys::cuCtxSynchronize());
        ok(sys::cuMemcpyDtoH_v2(host, word, 4), "read");
        println!("  word = {} (3 expected)", *(host as *const u32));
        show(
            "cuStreamDestroy(green stream)",
            sys::cuStreamDestroy_v2(stream),
        );
    }
}
