//! The counts of a tier: what every tier reports and the summary adds up.

use std::fmt;

/// The counts of one tier (or one kernel of the vm tier).
#[derive(Debug, Default)]
pub struct TierResult {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// Why the tier failed when no test result says so (a build error, a boot failure...).
    pub error: Option<String>,
}

impl TierResult {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds the counts of a libtest `test result:` line, if `line` is one.
    pub fn count(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let number_before = |word: &str| -> Option<u64> {
            let words: Vec<&str> = rest
                .split([' ', ';', '.'])
                .filter(|w| !w.is_empty())
                .collect();
            let at = words.iter().position(|w| *w == word)?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        };
        self.passed += number_before("passed").unwrap_or(0);
        self.failed += number_before("failed").unwrap_or(0);
    }

    /// Records a failure that no test counted: it still counts as one failed test, so the
    /// closing line can never read "0 failed" for a tier that did not run.
    pub fn fail(&mut self, why: impl Into<String>) {
        if self.failed == 0 {
            self.failed = 1;
        }
        self.error = Some(why.into());
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }
}

impl fmt::Display for TierResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} passed, {} failed",
            self.name, self.passed, self.failed
        )?;
        if let Some(error) = &self.error {
            write!(f, " ({error})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_result_lines_are_summed() {
        let mut result = TierResult::new("unit");
        result.count("test result: ok. 15 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        result.count(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        result.count("running 4 tests");
        assert_eq!((result.passed, result.failed), (18, 2));
        assert!(!result.ok());
    }

    #[test]
    fn a_tier_that_could_not_run_counts_as_a_failure() {
        let mut result = TierResult::new("vm (6.1)");
        result.fail("boot failure: no boot marker within 120s");
        assert_eq!(result.failed, 1);
        assert_eq!(
            result.to_string(),
            "vm (6.1): 0 passed, 1 failed (boot failure: no boot marker within 120s)"
        );
    }
}
