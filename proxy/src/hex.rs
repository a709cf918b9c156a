//! Lower-case hex written a byte at a time from a table: trace ids, span ids and request ids
//! are written for every request.

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

#[cfg(test)]
mod tests {
    #[test]
    fn writes_every_byte_as_two_lower_case_digits() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        super::write(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
