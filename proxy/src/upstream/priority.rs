//! Envoy's priority load: how much traffic each priority level gets, from the share of its
//! hosts that are usable, and when a level is in panic (balanced over all its hosts, usable or
//! not).
//!
//! - A level's health is `overprovisioning × usable / total`, capped at 100 (with the default
//!   factor 1.4, a level keeps all its traffic while at least 72 % of its hosts are usable).
//! - Levels take traffic in order, each up to its health, until 100 % is placed. If the
//!   health of all levels together is below 100, each gets its share of that total instead.
//! - Below 100 % total health, a level whose usable share is under the panic threshold is in
//!   panic; if every level is, traffic goes to each in proportion to its number of hosts.

/// A priority level's hosts: how many, and how many are usable (healthy, not ejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub usable: usize,
    pub total: usize,
}

/// The share of traffic (percent) a level gets, and whether it is in panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub percent: u32,
    pub panic: bool,
}

fn health(level: Level, overprovisioning: u32) -> u32 {
    if level.total == 0 {
        return 0;
    }
    let scaled = u64::from(overprovisioning) * level.usable as u64 / level.total as u64;
    u32::try_from(scaled.min(100)).unwrap_or(100)
}

/// Spreads 100 % over `weights` in proportion, the rounding remainder going to the first
/// levels with weight.
fn proportional(weights: &[u64]) -> Vec<u32> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<u32> = weights
        .iter()
        .map(|w| u32::try_from(w * 100 / sum).unwrap_or(100))
        .collect();
    let mut left = 100 - shares.iter().sum::<u32>();
    for (share, weight) in shares.iter_mut().zip(weights) {
        if left == 0 {
            break;
        }
        if *weight > 0 {
            *share += 1;
            left -= 1;
        }
    }
    shares
}

/// The load of each level. `overprovisioning` in percent (140 by default), `panic_threshold`
/// in percent (50 by default; 0 disables panic).
pub fn loads(levels: &[Level], overprovisioning: u32, panic_threshold: f64) -> Vec<Load> {
    let healths: Vec<u32> = levels
        .iter()
        .map(|l| health(*l, overprovisioning))
        .collect();
    let total = healths.iter().sum::<u32>().min(100);
    let panic: Vec<bool> = levels
        .iter()
        .map(|l| {
            total < 100
                && l.total > 0
                && (l.usable as f64 * 100.0 / l.total as f64) < panic_threshold
        })
        .collect();
    let percents = if !levels.is_empty() && panic.iter().all(|p| *p) {
        proportional(&levels.iter().map(|l| l.total as u64).collect::<Vec<_>>())
    } else if total == 100 {
        let mut left = 100;
        healths
            .iter()
            .map(|h| {
                let take = (*h).min(left);
                left -= take;
                take
            })
            .collect()
    } else {
        proportional(&healths.iter().map(|h| u64::from(*h)).collect::<Vec<_>>())
    };
    percents
        .into_iter()
        .zip(panic)
        .map(|(percent, panic)| Load { percent, panic })
        .collect()
}

/// The level a draw in `0..100` falls on.
pub fn choose(loads: &[Load], draw: u32) -> Option<usize> {
    crate::weighted::pick(loads.iter().map(|l| u64::from(l.percent)), u64::from(draw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(usable: usize, total: usize) -> Level {
        Level { usable, total }
    }

    fn percents(levels: &[Level]) -> Vec<(u32, bool)> {
        loads(levels, 140, 50.0)
            .into_iter()
            .map(|l| (l.percent, l.panic))
            .collect()
    }

    #[test]
    fn traffic_spills_to_the_next_level_as_hosts_fail() {
        // (levels, expected (percent, panic) per level, why)
        type Row = (Vec<Level>, Vec<(u32, bool)>, &'static str);
        let table: Vec<Row> = vec![
            (
                vec![level(10, 10), level(10, 10)],
                vec![(100, false), (0, false)],
                "all healthy",
            ),
            (
                vec![level(8, 10), level(10, 10)],
                vec![(100, false), (0, false)],
                "80 % × 1.4 ≥ 100",
            ),
            (
                vec![level(5, 10), level(10, 10)],
                vec![(70, false), (30, false)],
                "half: 70 / 30",
            ),
            (
                vec![level(0, 10), level(10, 10)],
                vec![(0, false), (100, false)],
                "failover",
            ),
            (
                vec![level(1, 2), level(0, 3), level(3, 3)],
                vec![(70, false), (0, false), (30, false)],
                "an empty level is skipped",
            ),
            (
                vec![level(2, 10), level(5, 10)],
                vec![(29, true), (71, false)],
                "98 % in all: shares of it; the level under 50 % usable panics",
            ),
            (
                vec![level(2, 10), level(1, 5)],
                vec![(67, true), (33, true)],
                "every level in panic: by host count",
            ),
            (
                vec![level(4, 10)],
                vec![(100, true)],
                "one level under the threshold: panic",
            ),
            (
                vec![level(6, 10)],
                vec![(100, false)],
                "one level at 60 %: no panic",
            ),
            (
                vec![level(0, 4)],
                vec![(100, true)],
                "nothing usable: panic, all hosts",
            ),
        ];
        for (levels, expected, why) in table {
            assert_eq!(percents(&levels), expected, "{why}");
        }
    }

    #[test]
    fn a_zero_threshold_never_panics_and_draws_follow_loads() {
        let l = loads(&[level(2, 10), level(3, 10)], 140, 0.0);
        assert!(l.iter().all(|l| !l.panic));
        let l = loads(&[level(5, 10), level(10, 10)], 140, 50.0);
        assert_eq!(choose(&l, 0), Some(0));
        assert_eq!(choose(&l, 69), Some(0));
        assert_eq!(choose(&l, 70), Some(1));
        assert_eq!(choose(&l, 99), Some(1));
    }
}
