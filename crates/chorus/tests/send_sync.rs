//! Thread-safety of every public handle, asserted at compile time.

fn send_sync<T: Send + Sync>() {}

/// `T` is not `Send`: the two impls conflict for a type that is `Send`, so this only compiles
/// when `T` is not `Send` (the trick of the `static_assertions` crate).
macro_rules! assert_not_send {
    ($t:ty) => {
        const _: fn() = || {
            trait AmbiguousIfSend<A> {
                fn some_item() {}
            }
            impl<T: ?Sized> AmbiguousIfSend<()> for T {}
            #[allow(dead_code)]
            struct Invalid;
            impl<T: ?Sized + Send> AmbiguousIfSend<Invalid> for T {}
            let _ = <$t as AmbiguousIfSend<_>>::some_item;
        };
    };
}

#[test]
fn public_handles_are_send_and_sync() {
    send_sync::<chorus::Device>();
    send_sync::<chorus_core::Device>();
    send_sync::<chorus::Stream>();
    send_sync::<chorus::Event>();
    send_sync::<chorus::Tensor>();
    send_sync::<chorus::Graph>();
    send_sync::<chorus::Config>();
    send_sync::<chorus::MemoryStats>();
    send_sync::<chorus::HandlerStats>();
    send_sync::<chorus::Error>();
    send_sync::<chorus::ConfigBuilder>();
    send_sync::<chorus::BackendKind>();
    send_sync::<chorus_cpu::CpuBackend>();
    send_sync::<chorus_cpu::CpuStream>();
    send_sync::<chorus_cpu::CpuEvent>();
    send_sync::<chorus_cpu::Segment>();
    #[cfg(feature = "cuda")]
    {
        send_sync::<chorus::cuda::CudaBackend>();
        send_sync::<chorus::cuda::CudaStream>();
        send_sync::<chorus::cuda::CudaEvent>();
        send_sync::<chorus::cuda::Segment>();
    }
}

// A stream guard restores the thread-local current stream: it must stay on its thread.
assert_not_send!(chorus::StreamGuard);
