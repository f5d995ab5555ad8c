//! What decoding one message may cost: element counts per field and a memory
//! budget per message, checked while decoding, before anything is allocated for
//! the elements.
//!
//! A frame is small ([`crate::MAX_FRAME_LEN`]), but what it decodes into need
//! not be: a few bytes of postcard make a 100-byte `SeqOp`, so a frame of tiny
//! operations would take dozens of times its size in memory. Every sequence and
//! byte string of a message is charged to a budget ([`MAX_DECODED_LEN`]) as its
//! length is read; a message that would pass it fails to decode.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// Memory one decoded message may take (its structures and their contents).
pub const MAX_DECODED_LEN: usize = 16 << 20;

/// Why decoding stopped at a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A field holds more elements than it may.
    #[error("{len} elements where at most {max} are allowed")]
    TooMany { len: usize, max: usize },
    /// The decoded message would take more memory than [`MAX_DECODED_LEN`].
    #[error("the message would take more than {MAX_DECODED_LEN} bytes once decoded")]
    Budget,
}

thread_local! {
    static USED: Cell<usize> = const { Cell::new(0) };
    /// Like the path refusal, kept here because postcard reports every custom
    /// error as the same opaque variant.
    static EXCEEDED: RefCell<Option<LimitError>> = const { RefCell::new(None) };
}

/// Starts the budget of a new message on this thread.
pub(crate) fn reset() {
    USED.with(|used| used.set(0));
    EXCEEDED.with(|cell| cell.borrow_mut().take());
}

/// Memory charged by the message decoded last on this thread.
pub fn decoded_cost() -> usize {
    USED.with(Cell::get)
}

/// The limit the last failed decode on this thread ran into.
pub(crate) fn take_exceeded() -> Option<LimitError> {
    EXCEEDED.with(|cell| cell.borrow_mut().take())
}

fn fail<E: de::Error>(error: LimitError) -> E {
    let message = error.to_string();
    EXCEEDED.with(|cell| *cell.borrow_mut() = Some(error));
    E::custom(message)
}

/// Charges `bytes` to the budget of the message being decoded.
pub(crate) fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    let total = USED.with(|used| {
        let total = used.get().saturating_add(bytes);
        used.set(total);
        total
    });
    if total > MAX_DECODED_LEN { Err(fail(LimitError::Budget)) } else { Ok(()) }
}

fn check_len<E: de::Error>(len: usize, max: usize) -> Result<(), E> {
    if len > max { Err(fail(LimitError::TooMany { len, max })) } else { Ok(()) }
}

/// Deserializes a `Vec<T>` of at most `MAX` elements, charging their size
/// before they are allocated.
pub fn vec<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a sequence of at most {MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            check_len(announced, MAX)?;
            let element = std::mem::size_of::<T>().max(1);
            charge(announced.saturating_mul(element))?;
            let mut out = Vec::with_capacity(announced);
            while let Some(value) = seq.next_element()? {
                if out.len() >= announced {
                    check_len(out.len() + 1, MAX)?;
                    charge(element)?;
                }
                out.push(value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

/// Deserializes a byte string of at most `MAX` bytes (written with `serde_bytes`).
pub fn bytes<'de, D: Deserializer<'de>, const MAX: usize>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    // The bytes were in the frame, so this copy is no larger than the frame.
    let buf: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
    check_len(buf.len(), MAX)?;
    charge(buf.len())?;
    Ok(buf.into_vec())
}

/// Deserializes a string of at most `MAX` bytes.
pub fn string<'de, D: Deserializer<'de>, const MAX: usize>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    check_len(text.len(), MAX)?;
    charge(text.len())?;
    Ok(text)
}
