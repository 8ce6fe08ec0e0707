//! Postgres snapshots as Kinbar revisions: parsing, printing, visibility
//! and the "sees everything that one sees" order.
//!
//! A revision is the text form of a `pg_snapshot` (`xmin:xmax:xip,…`): the
//! transactions visible in it are those below `xmax` and not in `xip`. Its
//! text is exactly what Postgres parses as `pg_snapshot`, so queries bind it
//! directly.

use std::fmt;

/// The most in-progress ids a revision may carry (bounds token size; far
/// above the concurrency of a Kinbar deployment's connection pools).
const MAX_XIP: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// Sorted, distinct, each in `xmin..xmax`.
    pub xip: Vec<u64>,
}

impl Snapshot {
    pub fn parse(s: &str) -> Option<Snapshot> {
        let mut parts = s.split(':');
        let xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let xip_text = parts.next()?;
        if parts.next().is_some() || xmin > xmax || xmax > i64::MAX as u64 {
            return None;
        }
        let mut xip = Vec::new();
        if !xip_text.is_empty() {
            for x in xip_text.split(',') {
                let x: u64 = x.parse().ok()?;
                if x < xmin || x >= xmax || xip.last().is_some_and(|l| *l >= x) {
                    return None;
                }
                xip.push(x);
            }
        }
        if xip.len() > MAX_XIP {
            return None;
        }
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether transaction `xid` is visible (committed) in this snapshot.
    pub fn visible(&self, xid: u64) -> bool {
        xid < self.xmax && self.xip.binary_search(&xid).is_err()
    }

    /// Whether every transaction visible in `other` is visible here.
    pub fn sees(&self, other: &Snapshot) -> bool {
        // Ids in self.xmax..other.xmax are invisible here; each must be
        // invisible in `other` too (in its xip).
        if other.xmax > self.xmax {
            let gap = other.xmax - self.xmax;
            let covered = other
                .xip
                .iter()
                .filter(|x| **x >= self.xmax && **x < other.xmax)
                .count() as u64;
            if covered != gap {
                return false;
            }
        }
        self.xip
            .iter()
            .filter(|x| **x < other.xmax)
            .all(|x| other.xip.binary_search(x).is_ok())
    }

    /// This snapshot with transaction `xid` (the writer's own) counted as
    /// committed: a write's revision sees the write.
    pub fn with_committed(&self, xid: u64) -> Snapshot {
        let mut out = self.clone();
        if xid >= out.xmax {
            out.xip.extend(out.xmax..xid);
            out.xmax = xid + 1;
        } else {
            out.xip.retain(|x| *x != xid);
        }
        out.normalize();
        out
    }

    /// The Watch position after delivering every transaction of `now`
    /// that `after` does not see with an id up to `cut`: below or at `cut`
    /// it is `now`, above it `after`.
    pub fn watch_position(after: &Snapshot, now: &Snapshot, cut: u64) -> Snapshot {
        let xmax = after.xmax.max(cut + 1);
        let mut xip: Vec<u64> = now.xip.iter().copied().filter(|x| *x <= cut).collect();
        xip.extend(after.xip.iter().copied().filter(|x| *x > cut));
        let mut s = Snapshot { xmin: 0, xmax, xip };
        s.normalize();
        s
    }

    /// Sorts and dedups `xip` and sets `xmin` to the oldest invisible id.
    fn normalize(&mut self) {
        self.xip.sort_unstable();
        self.xip.dedup();
        self.xmin = self.xip.first().copied().unwrap_or(self.xmax);
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(t: &str) -> Snapshot {
        Snapshot::parse(t).unwrap()
    }

    #[test]
    fn parse_print_round_trip_and_rejections() {
        for t in ["10:10:", "10:20:10,15", "1:5:2,3,4"] {
            assert_eq!(s(t).to_string(), t);
        }
        for bad in [
            "", "1", "1:2", "5:1:", "1:5:6", "1:5:3,2", "1:5:3,3", "a:b:", "1:2:3:4",
        ] {
            assert!(Snapshot::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn visibility_and_order() {
        let a = s("10:20:12,15");
        assert!(a.visible(9) && a.visible(11) && a.visible(19));
        assert!(!a.visible(12) && !a.visible(15) && !a.visible(20));
        let later = s("15:25:15,22");
        assert!(later.sees(&a));
        assert!(!a.sees(&later));
        assert!(a.sees(&a));
        // Concurrent: each sees something the other does not.
        let b = s("10:20:11");
        assert!(!a.sees(&b) && !b.sees(&a));
        // A gap fully in the other's xip does not count.
        assert!(s("10:12:").sees(&s("10:15:12,13,14")));
    }

    #[test]
    fn own_transaction_counts_as_committed() {
        let w = s("10:12:10").with_committed(14);
        assert_eq!(w.to_string(), "10:15:10,12,13");
        assert!(w.visible(14) && !w.visible(12));
        let w = s("10:20:10,14").with_committed(14);
        assert_eq!(w.to_string(), "10:20:10");
    }

    #[test]
    fn watch_positions_split_at_the_cut() {
        let after = s("10:12:10");
        let now = s("10:30:10,25");
        let p = Snapshot::watch_position(&after, &now, 20);
        // Up to 20: as `now` (10 invisible); above: as `after` (nothing above 12 visible... xmax 21).
        assert!(p.visible(15) && p.visible(20) && !p.visible(10) && !p.visible(21));
        assert!(now.sees(&p) && p.sees(&after));
    }
}
