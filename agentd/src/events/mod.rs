//! Kernel events: decoding ring-buffer records into one closed [`Event`] enum, and the reader
//! that drains the ring buffer and accounts for what the kernel could not deliver.

mod decode;
mod reader;
mod record;
#[cfg(test)]
mod tests;

pub use self::{
    decode::DecodeError,
    reader::{EventCounts, EventReader, ReaderError, ReaderStats},
    record::*,
};
