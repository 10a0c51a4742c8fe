//! proxy-wasm ABI 0.2.1 numbers and the serialized header-map format (the spec's
//! "Serialization" section): what both sides of the ABI agree on, nothing of Portico's.

/// `proxy_status_t`.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_map_type_t`.
pub mod map {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
    pub const CALL_RESPONSE_HEADERS: i32 = 6;
    pub const CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t`.
pub mod buffer {
    pub const REQUEST_BODY: i32 = 0;
    pub const RESPONSE_BODY: i32 = 1;
    pub const CALL_RESPONSE_BODY: i32 = 4;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_action_t`: what a stream callback returns.
pub const ACTION_PAUSE: i32 = 1;

/// `wasi_errno_t` values the WASI shims answer.
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSUP: i32 = 58;
}

/// The export marking a module's ABI version; 0.2.0 modules are accepted too (the
/// AssemblyScript and older Rust SDKs emit it; the calls Portico provides are the same).
pub const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

/// Serializes `pairs` as the spec's map: a count, the lengths, then each key and value
/// NUL-terminated.
pub fn serialize_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, bytes) = pairs.clone().fold((0usize, 0usize), |(n, b), (k, v)| {
        (n + 1, b + k.len() + v.len() + 2)
    });
    let mut out = Vec::with_capacity(4 + count * 8 + bytes);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Reads a serialized map; `None` when its lengths run past its end. An empty input (or a
/// single NUL) is the empty map.
pub fn deserialize_pairs(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if data.len() <= 1 {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    // Each pair takes at least 10 bytes (two lengths, two NULs): a count beyond that is a lie,
    // refused before it sizes an allocation.
    if count > data.len() / 10 {
        return None;
    }
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        lens.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (klen, vlen) in lens {
        let key = data.get(at..at.checked_add(klen)?)?;
        at += klen + 1;
        let value = data.get(at..at.checked_add(vlen)?)?;
        at += vlen + 1;
        if at > data.len() {
            return None;
        }
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_in_the_specs_layout() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b", b"22")];
        let bytes = serialize_pairs(pairs.iter().copied());
        assert_eq!(
            bytes,
            [
                2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b',
                0, b'2', b'2', 0
            ]
        );
        assert_eq!(deserialize_pairs(&bytes).unwrap(), pairs.to_vec());
    }

    #[test]
    fn broken_maps_are_refused_not_read_past_their_end() {
        assert_eq!(deserialize_pairs(&[]).unwrap(), vec![]);
        assert_eq!(deserialize_pairs(&[0]).unwrap(), vec![]);
        // A count of four billion in five bytes.
        assert!(deserialize_pairs(&[255, 255, 255, 255, 0]).is_none());
        let mut bytes = serialize_pairs([(&b"key"[..], &b"value"[..])].into_iter());
        bytes.truncate(bytes.len() - 3);
        assert!(deserialize_pairs(&bytes).is_none());
    }
}
