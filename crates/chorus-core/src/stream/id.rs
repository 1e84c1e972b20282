//! [`StreamId`]: the name of one stream of a device.

/// The name of one stream of a device: its index in the device's stream pool (0 is the default
/// stream, the rest are pooled; `Config::streams` of them in all, at most 1024).
///
/// Everything that names a stream (the runtime, the allocator's blocks and their users, a
/// storage's users, events, graphs, backends, errors) carries a `StreamId`, never a bare
/// integer. A `StreamId` does not know its device: it names a stream only together with one
/// (a [`Stream`](crate::Stream) handle carries both).
///
/// # Examples
/// ```
/// # let device = chorus_cpu::device()?;
/// let stream = device.stream(3)?;
/// assert_eq!(stream.id().index(), 3);
/// assert_eq!(stream.id().to_string(), "stream 3");
/// # Ok::<(), chorus_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u32);

impl StreamId {
    /// The default stream of every device.
    pub const DEFAULT: StreamId = StreamId(0);

    /// The stream at `index` of a device's pool. Whether the device has it is checked where
    /// the id is used (`Error::NoSuchStream`); an index beyond `u32::MAX` names `u32::MAX`,
    /// which no device has.
    pub const fn new(index: usize) -> StreamId {
        if index > u32::MAX as usize {
            StreamId(u32::MAX)
        } else {
            StreamId(index as u32)
        }
    }

    /// The stream's index in its device's pool.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Where this stream sits in a bitset of streams kept as `u64` words (a storage's users, a
    /// graph's streams): `(word, mask)`.
    pub(crate) fn bit(self) -> (usize, u64) {
        (self.index() / 64, 1 << (self.0 % 64))
    }

    /// The streams of a bitset of `u64` words, in index order.
    pub(crate) fn in_bitset(words: impl IntoIterator<Item = u64>) -> impl Iterator<Item = Self> {
        words.into_iter().enumerate().flat_map(|(w, mut bits)| {
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    StreamId::new(w * 64 + b)
                })
            })
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {}", self.0)
    }
}
