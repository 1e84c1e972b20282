//! Every public type of chorus-nn is `Send + Sync`: one model is shared by all threads.

use chorus_nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Embedding, Flatten, GroupNorm, LayerNorm, Linear, Mlp,
    Module, MultiheadAttention, NnError, Relu, Sequential, TransformerConfig, TransformerEncoder,
    TransformerEncoderLayer, Weights,
};

const fn send_sync<T: Send + Sync + ?Sized>() {}

const _: () = {
    send_sync::<Weights>();
    send_sync::<NnError>();
    send_sync::<dyn Module>();
    send_sync::<Box<dyn Module>>();
    send_sync::<Linear>();
    send_sync::<Mlp>();
    send_sync::<LayerNorm>();
    send_sync::<GroupNorm>();
    send_sync::<MultiheadAttention>();
    send_sync::<TransformerConfig>();
    send_sync::<TransformerEncoderLayer>();
    send_sync::<TransformerEncoder>();
    send_sync::<Conv2dConfig>();
    send_sync::<Conv2d>();
    send_sync::<AdaptiveAvgPool2d>();
    send_sync::<Embedding>();
    send_sync::<Relu>();
    send_sync::<Flatten>();
    send_sync::<Sequential>();
};

#[test]
fn public_types_are_send_and_sync() {
    // The assertions above are checked at compile time; this test makes the file show up in
    // the test run.
}
