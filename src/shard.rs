//! `--shard K/N`: which part of a fixed list of work items one process runs, for
//! `profile make` and `eval niah|sweep` on many machines (an array job's index).

use anyhow::{bail, Context, Result};

/// One shard of N: work item `i` (an SRH unit of `profile make`, a cell or prompt of
/// `eval`) goes to shard `i % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `K/N` (0 <= K < N) or `auto/N`, where `auto` reads the index from
    /// `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX` (via `env`).
    pub fn parse(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard> {
        let bad = || {
            anyhow::anyhow!(
                "--shard {spec}: expected K/N with 0 <= K < N (e.g. 0/4 .. 3/4), or auto/N"
            )
        };
        let (k, n) = spec.split_once('/').ok_or_else(bad)?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let index: usize = if k.trim() == "auto" {
            let (var, val) = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
                .iter()
                .find_map(|v| env(v).map(|x| (*v, x)))
                .context("--shard auto/N: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; give the index as K/N")?;
            val.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--shard auto/{count}: {var}={val} is not an index"))?
        } else {
            k.trim().parse().map_err(|_| bad())?
        };
        if index >= count {
            bail!("--shard: index {index} is not below the shard count {count} (shards are 0/{count} .. {}/{count})", count - 1);
        }
        Ok(Shard { index, count })
    }

    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|v| v.0 == k).map(|v| v.1.to_string())
    }

    #[test]
    fn shard_specs() {
        let none = env(&[]);
        assert_eq!(
            Shard::parse("1/4", &none).unwrap(),
            Shard { index: 1, count: 4 }
        );
        for bad in ["3/2", "0/0", "2/2", "x/2", "1", "-1/2", "1/x"] {
            let err = Shard::parse(bad, &none).unwrap_err().to_string();
            assert!(err.contains("--shard"), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "2")]);
        assert_eq!(Shard::parse("auto/3", &slurm).unwrap().index, 2);
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(Shard::parse("auto/3", &k8s).unwrap().index, 0);
        assert!(Shard::parse("auto/3", &none).is_err());
        assert!(Shard::parse("auto/2", &slurm).is_err());
        let s = Shard { index: 1, count: 3 };
        assert_eq!((0..7).filter(|&i| s.owns(i)).collect::<Vec<_>>(), [1, 4]);
    }
}
