//! A safe, streaming view of libyaml's event parser: the same `unsafe-libyaml` crate (and
//! version) that `serde_yaml_ng` parses documents with, so that [`super::yaml_limits`] sees
//! exactly the events the deserializer will see. `serde_yaml_ng` collects every event of a
//! document before deserializing; this yields them one at a time, so a scan can stop at the
//! first one past a limit. All unsafe code of the crate is in this module.

use std::{ffi::CStr, marker::PhantomData, mem::MaybeUninit};

/// One parser event, with what the limits need. Anchors are kept as bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Stream and document boundaries.
    Boundary,
    StreamEnd,
    Alias(Vec<u8>),
    Scalar {
        anchor: Option<Vec<u8>>,
        value: String,
    },
    SequenceStart(Option<Vec<u8>>),
    SequenceEnd,
    MappingStart(Option<Vec<u8>>),
    MappingEnd,
}

/// A parse error: libyaml's problem and where (1-based line and column).
#[derive(Debug)]
pub(super) struct ParseError {
    pub problem: String,
    pub line: u64,
    pub column: u64,
}

pub(super) struct Parser<'input> {
    /// Boxed: libyaml keeps pointers into the parser's own buffers, so it must not move.
    sys: Box<unsafe_libyaml::yaml_parser_t>,
    _input: PhantomData<&'input [u8]>,
}

impl<'input> Parser<'input> {
    pub fn new(input: &'input str) -> Self {
        let mut raw = Box::<unsafe_libyaml::yaml_parser_t>::new_uninit();
        // SAFETY: `yaml_parser_initialize` initialises the whole struct (it fails only when
        // allocating its buffers fails, which aborts like any allocation failure in Rust).
        // The input outlives the parser (`'input`), which reads it only while it lives.
        let sys = unsafe {
            assert!(
                !unsafe_libyaml::yaml_parser_initialize(raw.as_mut_ptr()).fail,
                "libyaml could not allocate its parser"
            );
            let mut sys = raw.assume_init();
            unsafe_libyaml::yaml_parser_set_encoding(
                &raw mut *sys,
                unsafe_libyaml::YAML_UTF8_ENCODING,
            );
            unsafe_libyaml::yaml_parser_set_input_string(
                &raw mut *sys,
                input.as_ptr(),
                input.len() as u64,
            );
            sys
        };
        Self {
            sys,
            _input: PhantomData,
        }
    }

    /// The next event; after an error or [`Event::StreamEnd`], do not call again.
    pub fn next_event(&mut self) -> Result<(Event, u64), ParseError> {
        let mut raw = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: the parser is initialised; on success `raw` is an initialised event, which
        // is read according to its type and then deleted exactly once.
        unsafe {
            if unsafe_libyaml::yaml_parser_parse(&raw mut *self.sys, raw.as_mut_ptr()).fail {
                let problem = if self.sys.problem.is_null() {
                    "invalid YAML".to_owned()
                } else {
                    CStr::from_ptr(self.sys.problem)
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(ParseError {
                    problem,
                    line: self.sys.problem_mark.line + 1,
                    column: self.sys.problem_mark.column + 1,
                });
            }
            let mut event = raw.assume_init();
            let line = event.start_mark.line + 1;
            let converted = match event.type_ {
                unsafe_libyaml::YAML_STREAM_END_EVENT => Event::StreamEnd,
                unsafe_libyaml::YAML_ALIAS_EVENT => Event::Alias(bytes(event.data.alias.anchor)),
                unsafe_libyaml::YAML_SCALAR_EVENT => {
                    let scalar = event.data.scalar;
                    let length = usize::try_from(scalar.length).unwrap_or(usize::MAX);
                    let value = if scalar.value.is_null() || length == 0 {
                        String::new()
                    } else {
                        String::from_utf8_lossy(std::slice::from_raw_parts(scalar.value, length))
                            .into_owned()
                    };
                    Event::Scalar {
                        anchor: anchor(scalar.anchor),
                        value,
                    }
                }
                unsafe_libyaml::YAML_SEQUENCE_START_EVENT => {
                    Event::SequenceStart(anchor(event.data.sequence_start.anchor))
                }
                unsafe_libyaml::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
                unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                    Event::MappingStart(anchor(event.data.mapping_start.anchor))
                }
                unsafe_libyaml::YAML_MAPPING_END_EVENT => Event::MappingEnd,
                _ => Event::Boundary,
            };
            unsafe_libyaml::yaml_event_delete(&raw mut event);
            Ok((converted, line))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted once.
        unsafe { unsafe_libyaml::yaml_parser_delete(&raw mut *self.sys) }
    }
}

/// A NUL-terminated libyaml string, or `None` for a null pointer.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string that lives for the call.
unsafe fn anchor(ptr: *const u8) -> Option<Vec<u8>> {
    // SAFETY: as the caller promises.
    (!ptr.is_null()).then(|| unsafe { bytes(ptr) })
}

/// # Safety
/// `ptr` points to a NUL-terminated string that lives for the call.
unsafe fn bytes(ptr: *const u8) -> Vec<u8> {
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(ptr.cast()) }.to_bytes().to_vec()
}
