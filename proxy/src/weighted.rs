//! Weighted choice, the one way the proxy draws an index in proportion to weights: a route's
//! weighted clusters, a TCP proxy's weighted clusters, hosts under a load balancer, and
//! priority levels under their load.
//!
//! A draw in `0..total` falls on the index whose share of the cumulative weights covers it:
//! with weights `[1, 3]`, draw `0` is index 0 and draws `1..4` are index 1. Zero weights never
//! win.

use rand::Rng;

/// The index whose span of the cumulative `weights` covers `draw`; `None` when `draw` is not
/// below the total (no weights, all zero, or a draw out of range).
pub fn pick(weights: impl IntoIterator<Item = u64>, draw: u64) -> Option<usize> {
    let mut edge: u64 = 0;
    for (i, weight) in weights.into_iter().enumerate() {
        edge = edge.saturating_add(weight);
        if draw < edge {
            return Some(i);
        }
    }
    None
}

/// A uniform draw for [`pick`] over weights adding up to `total` (`0` when `total` is 0).
pub fn draw(total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        rand::rng().random_range(0..total)
    }
}

/// [`pick`] with a uniform draw: `None` only when there are no weights or all are zero.
pub fn pick_random<W>(weights: W) -> Option<usize>
where
    W: IntoIterator<Item = u64>,
    W::IntoIter: Clone,
{
    let weights = weights.into_iter();
    let total = weights
        .clone()
        .fold(0u64, |sum, weight| sum.saturating_add(weight));
    pick(weights, draw(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draw_falls_on_the_index_whose_span_covers_it() {
        // (weights, draw, expected index, why)
        type Row = (&'static [u64], u64, Option<usize>, &'static str);
        let table: [Row; 10] = [
            (&[1, 3], 0, Some(0), "the first span"),
            (
                &[1, 3],
                1,
                Some(1),
                "the second span starts after the first",
            ),
            (&[1, 3], 3, Some(1), "the last draw in range"),
            (&[1, 3], 4, None, "at the total: out of range"),
            (&[0, 2, 0, 1], 0, Some(1), "a zero weight never wins"),
            (&[0, 2, 0, 1], 2, Some(3), "zero weights are skipped"),
            (&[], 0, None, "no weights"),
            (&[0, 0], 0, None, "all zero"),
            (&[5], 4, Some(0), "one weight"),
            (&[u64::MAX, 1], u64::MAX - 1, Some(0), "no overflow"),
        ];
        for (weights, draw, expected, why) in table {
            assert_eq!(pick(weights.iter().copied(), draw), expected, "{why}");
        }
    }

    #[test]
    fn every_draw_in_range_is_covered_in_proportion() {
        let weights = [2u64, 0, 5, 1];
        let mut counts = [0usize; 4];
        for draw in 0..8 {
            counts[pick(weights, draw).unwrap()] += 1;
        }
        assert_eq!(counts, [2, 0, 5, 1]);
    }

    #[test]
    fn random_picks_follow_the_weights_and_need_one_positive_weight() {
        assert_eq!(pick_random([0u64, 0]), None);
        assert_eq!(pick_random(std::iter::empty::<u64>()), None);
        assert_eq!(draw(0), 0);
        for _ in 0..200 {
            assert_eq!(pick_random([0u64, 7, 0]), Some(1));
            assert!(draw(3) < 3);
        }
        let ones = (0..4000)
            .filter(|_| pick_random([1u64, 3]) == Some(1))
            .count();
        // Three quarters, within a wide margin.
        assert!((2700..3300).contains(&ones), "{ones}");
    }
}
