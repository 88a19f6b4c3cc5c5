//! Feeds bytes to [`ItemAssembler`] (the decoder a stream's reader uses: whole frames taken
//! from each chunk, split ones gathered) in arbitrary chunks, in both directions, taking items
//! by its fast path or not as the input says, and checks what the
//! streaming rule of docs/PROTOCOL.md section 15 guarantees: a stream is complete only when its
//! sender said so. Shared by `streaming_wire.rs` and the `stream_items` fuzz target (`fuzz/`),
//! so it depends on nothing but meshrpc.
#![allow(dead_code, unreachable_pub)]

use meshrpc::Code;
use meshrpc::bytes::Bytes;
use meshrpc::bytes::BytesMut;
use meshrpc::wire::{
    Direction, FrameDecoder, FrameKind, ItemAssembler, ItemDecoder, ItemEvent, StatusBody,
};

/// The message limit of the decoder under test: small, so mutated lengths often exceed it.
pub const MAX_MESSAGE: usize = 4096;

/// How a stream of items ended, as the decoder told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Complete.
    Finished { items: usize },
    /// An error.
    Failed { items: usize, code: Code },
}

/// Decodes `input` as a whole stream of items in `direction` (the stream ends after the last
/// byte), delivered in chunks of the sizes `next_cut` returns, and panics if the decoder breaks
/// one of its guarantees:
/// - it reports exactly one ending, and nothing after it;
/// - every item is a `DATA` body within the limit, and the items are the `DATA` bodies of the
///   input in order, up to the ending;
/// - the stream is `Finished` only if the input is whole frames of `DATA` ending with a `FIN`
///   (caller's half) or with a `STATUS` of code 0 (callee's half; what follows a status is never
///   read); never otherwise;
/// - an ending reported as an error never carries the code `ok`.
pub fn check(input: &[u8], direction: Direction, mut next_cut: impl FnMut() -> usize) -> Ending {
    check_taking(input, direction, &mut next_cut, false)
}

/// [`check`], taking whole items by the assembler's fast path first when `fast` is set.
pub fn check_taking(
    input: &[u8],
    direction: Direction,
    mut next_cut: impl FnMut() -> usize,
    fast: bool,
) -> Ending {
    let mut assembler =
        ItemAssembler::new(ItemDecoder::new(MAX_MESSAGE, direction), BytesMut::new());
    let mut items = Vec::new();
    let mut ending = None;
    let mut at = 0;
    let drain = |assembler: &mut ItemAssembler, items: &mut Vec<Bytes>| loop {
        if fast {
            if let Some(item) = assembler.next_item() {
                items.push(item);
                continue;
            }
        }
        match assembler.next_event() {
            Some(event) => {
                if let Some(end) = take(event, items) {
                    return Some(end);
                }
            }
            None => return None,
        }
    };
    while ending.is_none() {
        if at >= input.len() {
            ending = drain(&mut assembler, &mut items);
            if ending.is_none() {
                ending = take(assembler.finish(), &mut items);
            }
            break;
        }
        let cut = next_cut().max(1).min(input.len() - at);
        assembler.push(Bytes::copy_from_slice(&input[at..at + cut]));
        at += cut;
        ending = drain(&mut assembler, &mut items);
    }
    let ending = ending.expect("the decoder reports an ending");
    assert!(assembler.is_ended(), "the decoder knows it ended");
    assert!(
        assembler.next_item().is_none() && assembler.next_event().is_none(),
        "nothing after the ending"
    );
    // What the input really is, frame by frame.
    let truth = FrameDecoder::new(MAX_MESSAGE);
    let mut whole = BytesMut::from(input);
    let mut data = Vec::new();
    let mut finished_by = None;
    loop {
        match truth.decode(&mut whole) {
            Ok(Some(frame)) if frame.kind == FrameKind::Data && finished_by.is_none() => {
                data.push(frame.body)
            }
            Ok(Some(frame)) if frame.kind == FrameKind::Status && finished_by.is_none() => {
                let ok = meshrpc::codec::from_slice_bounded::<StatusBody>(
                    &frame.body,
                    meshrpc::codec::MAX_HEADER_DEPTH,
                )
                .is_ok_and(|status| status.is_ok());
                // The sender's status is its last word: whatever follows it is not read.
                finished_by = Some(ok);
                break;
            }
            Ok(Some(_)) => {
                finished_by = Some(false);
                break;
            }
            Ok(None) => break,
            Err(_) => {
                finished_by = Some(false);
                break;
            }
        }
    }
    let whole_frames = whole.is_empty() || finished_by.is_some();
    assert_eq!(
        items[..],
        data[..items.len().min(data.len())],
        "the items are the DATA bodies in order"
    );
    assert!(items.iter().all(|item| item.len() <= MAX_MESSAGE));
    let may_finish = match direction {
        Direction::Request => whole_frames && finished_by.is_none(),
        Direction::Reply => whole_frames && finished_by == Some(true),
    };
    match ending {
        Ending::Finished { items: count } => {
            assert!(
                may_finish,
                "{direction:?}: a stream that is not complete was reported finished"
            );
            assert_eq!(count, data.len(), "a finished stream delivered every item");
        }
        Ending::Failed { code, .. } => {
            assert_ne!(code, Code::Ok, "an error ending with code ok");
            if direction == Direction::Request {
                assert!(
                    !may_finish,
                    "a complete request stream was reported as an error ({code})"
                );
            }
        }
    }
    ending
}

fn take(event: ItemEvent, items: &mut Vec<meshrpc::bytes::Bytes>) -> Option<Ending> {
    match event {
        ItemEvent::Item(item) => {
            items.push(item);
            None
        }
        ItemEvent::End => Some(Ending::Finished { items: items.len() }),
        ItemEvent::Failed(status, _) => Some(Ending::Failed {
            items: items.len(),
            code: status.code(),
        }),
    }
}

/// The fuzz target's entry: the first byte picks the direction, whether items are taken by the
/// fast path, and the chunk size; the rest is the stream.
pub fn check_fuzz_input(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let direction = if control & 1 == 0 {
        Direction::Request
    } else {
        Direction::Reply
    };
    let fast = control & 2 != 0;
    let cut = usize::from(control >> 2) + 1;
    check_taking(input, direction, || cut, fast);
}
