//! Which of the worker's models takes the next step: equal device time for every model with work.
//!
//! Steps of different models cost different times (a 0.5B model's decode step is several times a
//! 135M model's), so taking turns step by step would slow the cheap model down to the expensive
//! one's pace: measured with `bench models`, the small model's four requests finished at 6.4 s
//! instead of 2.6 s. Instead each model is charged the device time of its steps, and the model with
//! work that has been charged least goes next, as a fair-share CPU scheduler does. A model that
//! comes back from idle is charged at least the floor: the least charge of the busy models, as it
//! stood at the last choice that had one (it never goes down, as a CPU scheduler's minimum virtual
//! runtime). So time a model did not use while idle is no credit that would let it shut the others
//! out, whether or not another model was busy when it came back.

use std::time::Duration;

/// Device time charged to each model, which models had work at the last choice, and the floor.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    charged: Vec<Duration>,
    active: Vec<bool>,
    floor: Duration,
}

impl Turns {
    pub(crate) fn new(models: usize) -> Turns {
        Turns {
            charged: vec![Duration::ZERO; models],
            active: vec![false; models],
            floor: Duration::ZERO,
        }
    }

    /// The model to step next among those with work (`has_work(i)`), or `None` when none has.
    pub(crate) fn next(&mut self, has_work: impl Fn(usize) -> bool) -> Option<usize> {
        if let Some(busy) = (0..self.charged.len())
            .filter(|&i| self.active[i] && has_work(i))
            .map(|i| self.charged[i])
            .min()
        {
            self.floor = self.floor.max(busy);
        }
        for i in 0..self.charged.len() {
            let work = has_work(i);
            if work && !self.active[i] {
                self.charged[i] = self.charged[i].max(self.floor);
            }
            self.active[i] = work;
        }
        (0..self.charged.len())
            .filter(|&i| has_work(i))
            .min_by_key(|&i| self.charged[i])
    }

    /// Charges model `i` for a step that took `took`.
    pub(crate) fn charge(&mut self, i: usize, took: Duration) {
        self.charged[i] += took;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs `steps` choices with models whose steps cost `cost[i]`; returns steps per model.
    fn share(turns: &mut Turns, has_work: &[bool], cost: &[Duration], steps: usize) -> Vec<usize> {
        let mut taken = vec![0; cost.len()];
        for _ in 0..steps {
            let i = turns.next(|k| has_work[k]).unwrap();
            turns.charge(i, cost[i]);
            taken[i] += 1;
        }
        taken
    }

    #[test]
    fn device_time_is_shared_equally_not_steps() {
        let mut turns = Turns::new(2);
        // Model 1's steps cost four times model 0's: model 0 takes four steps per step of model 1.
        let taken = share(&mut turns, &[true, true], &[MS, 4 * MS], 50);
        assert_eq!(taken, vec![40, 10]);
    }

    #[test]
    fn a_lone_model_takes_every_step_and_none_is_chosen_without_work() {
        let mut turns = Turns::new(3);
        assert_eq!(
            share(&mut turns, &[false, true, false], &[MS; 3], 5),
            vec![0, 5, 0]
        );
        assert_eq!(turns.next(|_| false), None);
    }

    #[test]
    fn idle_time_is_no_credit() {
        let mut turns = Turns::new(2);
        // Model 0 runs alone for 100 ms; then model 1 gets work.
        share(&mut turns, &[true, false], &[MS, MS], 100);
        // Model 1 starts level with model 0, so they alternate instead of model 1 taking 100 steps.
        let taken = share(&mut turns, &[true, true], &[MS, MS], 10);
        assert_eq!(taken, vec![5, 5]);
    }

    #[test]
    fn a_model_that_comes_back_while_no_other_is_busy_gets_no_credit_either() {
        let mut turns = Turns::new(2);
        // Model 0 runs alone for 100 ms and goes idle; model 1 comes back while nothing is busy
        // and runs alone for a step; then both have work.
        share(&mut turns, &[true, false], &[MS, MS], 100);
        share(&mut turns, &[false, true], &[MS, MS], 1);
        // Model 1 does not get model 0's 100 ms of past work as credit: they alternate.
        let taken = share(&mut turns, &[true, true], &[MS, MS], 10);
        assert_eq!(taken, vec![5, 5]);
    }
}
