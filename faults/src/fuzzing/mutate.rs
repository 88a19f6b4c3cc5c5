//! Deterministic mutations of seed inputs, the kinds a coverage-guided fuzzer tries first:
//! bit flips, random bytes, insertions, deletions, truncation, splices of other seeds, repeats,
//! and "interesting" tokens for text formats. Seeded, so a failing iteration can be replayed.

/// A small seeded generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            (self.next_u64() % bound as u64) as usize
        }
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Tokens that matter to TOML, JSON and MessagePack decoders.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"{",
    b"}",
    b"[",
    b"]",
    b"=",
    b",",
    b":",
    b"\n",
    b"\\u0000",
    b"\"\"\"",
    b"#",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"null",
    b"true",
    b"\xc3\xa9",
    b"\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xc0",
    b"\xc1",
    b"\x91",
    b"\x81",
    b"[[",
    b"]]",
    b"fn = \"f() -> u8\"",
    b"returns = ",
    b"idempotent = true",
];

/// Applies one to four mutations to `input`, splicing from `seeds`.
pub fn mutate(rng: &mut XorShift, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..rng.below(4) + 1 {
        mutate_once(rng, input, seeds);
    }
    // Keep inputs a fuzzer's usual size.
    input.truncate(64 * 1024);
}

fn mutate_once(rng: &mut XorShift, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(9) {
        0 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let at = rng.below(input.len());
            input[at] = rng.byte();
        }
        2 => {
            let at = rng.below(input.len() + 1);
            let bytes: Vec<u8> = (0..rng.below(8) + 1).map(|_| rng.byte()).collect();
            input.splice(at..at, bytes);
        }
        3 if !input.is_empty() => {
            let from = rng.below(input.len());
            let to = (from + rng.below(32) + 1).min(input.len());
            input.drain(from..to);
        }
        4 => input.truncate(rng.below(input.len() + 1)),
        5 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            let to = (from + rng.below(64)).min(other.len());
            let at = rng.below(input.len() + 1);
            input.splice(at..at, other[from..to].iter().copied());
        }
        6 if !input.is_empty() => {
            let from = rng.below(input.len());
            let to = (from + rng.below(32) + 1).min(input.len());
            let slice = input[from..to].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, slice);
        }
        _ => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(input.len() + 1);
            input.splice(at..at, token.iter().copied());
        }
    }
}
