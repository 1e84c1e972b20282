//! CPU backend of chorus (work in progress: kernels first).
mod kernels;
