//! Thread-safety of the public handles, asserted at compile time.

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_handles_are_send_and_sync() {
    send_sync::<chorus_batch::BatchQueue>();
    send_sync::<chorus_batch::BatchConfig>();
    send_sync::<chorus_batch::BatchError>();
    send_sync::<chorus_batch::BatchStats>();
    send_sync::<chorus_batch::BatchInfo>();
    send_sync::<chorus_batch::Ticket>();
    send_sync::<chorus_batch::Ticket<chorus_batch::HostTensor>>();
    send_sync::<chorus_batch::HostTensor>();
    send_sync::<chorus_batch::Input>();
    // A ticket moves to the thread (or task) that waits for it.
    send::<chorus_batch::Ticket>();
}
