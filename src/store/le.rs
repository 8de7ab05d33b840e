//! Little-endian integers at fixed offsets of the fixed-size headers, tables and trailers the
//! formats define. A caller passes an offset inside a slice whose length it checked; the reads
//! use no arithmetic of their own, so nothing here can overflow.

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..][..2]);
    u16::from_le_bytes(a)
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..][..4]);
    u32::from_le_bytes(a)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..][..8]);
    u64::from_le_bytes(a)
}

pub fn u128_at(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..][..16]);
    u128::from_le_bytes(a)
}
