//! The memory plan: every intermediate f32 buffer gets an offset in one
//! arena, and buffers whose lifetimes do not overlap share space.

/// A buffer to place: `len` floats, live from step `first` to step `last`
/// (inclusive; the step that writes it to the last step that reads it).
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub len: usize,
    pub first: usize,
    pub last: usize,
}

/// Offsets are rounded to a cache line (64 bytes), so that, the arena
/// itself starting on one (`AlignedF32`), every buffer starts on a line and
/// vector loads of one never touch another's line.
const ALIGN: usize = crate::codegen::aligned::LINE_FLOATS;

/// Greedy first-fit by decreasing size: returns each buffer's offset and the
/// arena length. Two buffers get overlapping ranges only if their lifetimes
/// are disjoint.
pub fn place(buffers: &[Lifetime]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].len), i));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for i in order {
        let b = buffers[i];
        let size = b.len.div_ceil(ALIGN) * ALIGN;
        // Ranges already taken by buffers alive at the same time, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&j| {
                (
                    offsets[j],
                    offsets[j].saturating_add(buffers[j].len.div_ceil(ALIGN) * ALIGN),
                )
            })
            .collect();
        busy.sort_unstable();
        // Saturating: each buffer fits in memory (the concrete graph is
        // checked), but their sum need not; the budget check then refuses it.
        let mut offset = 0usize;
        for (start, end) in busy {
            if offset.saturating_add(size) <= start {
                break;
            }
            offset = offset.max(end);
        }
        offsets[i] = offset;
        total = total.max(offset.saturating_add(size));
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_lifetimes_share_and_overlapping_ones_do_not() {
        let buffers = [
            Lifetime {
                len: 100,
                first: 0,
                last: 1,
            },
            Lifetime {
                len: 100,
                first: 1,
                last: 2,
            },
            Lifetime {
                len: 100,
                first: 2,
                last: 3,
            },
        ];
        let (offsets, total) = place(&buffers);
        // 0 and 2 may share; 1 overlaps both.
        assert_eq!(offsets[0], offsets[2]);
        assert_ne!(offsets[0], offsets[1]);
        assert_eq!(total, 2 * 112);
        for (i, a) in buffers.iter().enumerate() {
            for (j, b) in buffers.iter().enumerate() {
                let live_together = a.first <= b.last && b.first <= a.last;
                let overlap = offsets[i] < offsets[j] + b.len && offsets[j] < offsets[i] + a.len;
                assert!(i == j || !(live_together && overlap), "{i} and {j} collide");
            }
        }
    }
}
