//! Lower-case hex, both ways: trace ids, span ids and request ids are written from a table a
//! byte at a time, and a W3C `traceparent`'s 48 digits are read eight at a time; both run for
//! every request.

/// Each byte's two lower-case hex digits.
static PAIRS: [[u8; 2]; 256] = pairs();

const fn pairs() -> [[u8; 2]; 256] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
}

/// Writes `bytes` as hex into `out`, which holds exactly two digits per byte.
pub fn write(out: &mut [u8], bytes: &[u8]) {
    assert_eq!(out.len(), 2 * bytes.len(), "two hex digits per byte");
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*byte)]);
    }
}

/// 16 lower-case hex digits (W3C's only case): their value, or `None` for anything else.
pub fn parse_lower_16(digits: &[u8; 16]) -> Option<u64> {
    let (high, low) = digits.split_at(8);
    let high = parse_lower_8(high.try_into().ok()?)?;
    let low = parse_lower_8(low.try_into().ok()?)?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// 8 lower-case hex digits, checked and converted in one 64-bit word (about half the
/// instructions of a table lookup per digit).
fn parse_lower_8(digits: [u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The first digit in the most significant byte.
    let v = u64::from_be_bytes(digits);
    if v & HIGH != 0 {
        return None;
    }
    // For a byte below 0x80, adding 0x80 - n sets its high bit exactly when it is at least n,
    // and never carries into the next byte.
    let at_least = |n: u8| v + ONES * u64::from(0x80 - n);
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if (digit | letter) & HIGH != HIGH {
        return None;
    }
    // A digit's value is its low nibble; a letter's (`a` is 0x61) its low nibble plus 9.
    let letters = (letter & HIGH) >> 7;
    let mut n = (v & (ONES * 0x0f)) + letters * 9;
    // Pack the eight nibbles: pairs into bytes, bytes into 16-bit lanes, lanes into 32 bits.
    n = (n | (n >> 4)) & 0x00ff_00ff_00ff_00ff;
    n = (n | (n >> 8)) & 0x0000_ffff_0000_ffff;
    n = (n | (n >> 16)) & 0x0000_0000_ffff_ffff;
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use rand::Rng as _;

    /// What `parse_lower_16` must say, written the plain way.
    fn plain(digits: &[u8; 16]) -> Option<u64> {
        let lower = digits
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        lower
            .then(|| u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok())
            .flatten()
    }

    #[test]
    fn reads_lower_case_hex_and_nothing_else() {
        assert_eq!(
            super::parse_lower_16(b"00f067aa0ba902b7"),
            Some(0x00f0_67aa_0ba9_02b7)
        );
        assert_eq!(super::parse_lower_16(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(super::parse_lower_16(b"0000000000000000"), Some(0));
        // Every byte value in every position, among valid digits.
        for position in 0..16 {
            for byte in 0..=255u8 {
                let mut digits = *b"0123456789abcdef";
                digits[position] = byte;
                assert_eq!(
                    super::parse_lower_16(&digits),
                    plain(&digits),
                    "byte {byte:#04x} at {position}"
                );
            }
        }
        // Random strings over the digits and their neighbours in ASCII.
        let alphabet = b"0123456789abcdefABCDEF/:@`gG \x7f\x80\xff-";
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let mut digits = [0u8; 16];
            for d in &mut digits {
                *d = if rng.random_bool(0.9) {
                    b"0123456789abcdef"[rng.random_range(0..16)]
                } else {
                    alphabet[rng.random_range(0..alphabet.len())]
                };
            }
            assert_eq!(super::parse_lower_16(&digits), plain(&digits), "{digits:?}");
        }
    }

    #[test]
    fn writes_every_byte_as_two_lower_case_digits() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        super::write(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
