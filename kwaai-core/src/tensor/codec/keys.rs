//! Order-preserving u32 keys for float32 and a fast "how many sorted keys are below" lookup,
//! used to place values into buckets in one table read instead of a binary search.

/// Maps float32 to u32 so that unsigned order is numeric order (-0.0 just below +0.0, NaN
/// with the sign bit clear above +inf).
#[inline]
pub(super) fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The float32 whose [`order_key`] is `key`.
pub(super) fn from_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 { key & 0x7FFF_FFFF } else { !key })
}

/// Counts, for any key, how many of up to 255 sorted keys lie strictly below it: a table over
/// the top 16 key bits gives the count below each cell, and the keys inside a cell (rarely more
/// than one) are binary-searched.
pub(super) struct KeyCounter {
    keys: Vec<u32>,
    below_cell: Vec<u8>,
}

impl KeyCounter {
    /// `keys` must be sorted and at most 255 long.
    pub(super) fn new(keys: Vec<u32>) -> KeyCounter {
        debug_assert!(keys.len() <= 255 && keys.windows(2).all(|w| w[0] <= w[1]));
        let mut below_cell = vec![0u8; 1 << 16];
        let mut count = 0usize;
        for (cell, slot) in below_cell.iter_mut().enumerate() {
            let start = (cell as u32) << 16;
            while count < keys.len() && keys[count] < start {
                count += 1;
            }
            *slot = count as u8;
        }
        KeyCounter { keys, below_cell }
    }

    /// The number of keys `< key`.
    #[inline]
    pub(super) fn count_below(&self, key: u32) -> usize {
        let cell = (key >> 16) as usize;
        let lo = self.below_cell[cell] as usize;
        let hi = self.below_cell.get(cell + 1).map_or(self.keys.len(), |&c| c as usize);
        lo + self.keys[lo..hi].partition_point(|&k| k < key)
    }
}
