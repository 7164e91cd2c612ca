//! Which KV-cache blocks are free, which sequences hold which, and which hold a known prefix
//! (automatic prefix caching).
//!
//! A full block whose positions have all been computed is known by its contents: a hash of its
//! tokens chained with the hash of the block before it, so one hash stands for the whole prefix up
//! to the block's end. Such blocks are registered under that hash, and a later sequence whose tokens
//! start the same way takes them (one more reference each) instead of computing them again: a
//! shared system prompt, the earlier turns of a conversation, the `n` choices of one request.
//! Only full blocks are shared, and a sequence writes only past its shared prefix, so a shared
//! block is never written again.
//!
//! A registered block that no sequence holds stays registered (idle) until its memory is needed.
//! Blank blocks are handed out first, then idle ones, least recently released first; a sequence's
//! blocks are released last to first, so its tail goes before its head (a block is of no use
//! without the blocks before it).
//!
//! Hashes are keyed per pool (SipHash with random keys, `std`'s `RandomState`), and a match is
//! confirmed against the block's stored tokens and parent hash, so a prompt cannot be crafted to pass
//! for another user's.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// The parent hash of a sequence's first block.
const ROOT: u64 = 0;

/// The blocks one sequence holds, in position order.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// Chained content hashes of the leading blocks that are full and computed (registered or not).
    hashes: Vec<u64>,
}

impl BlockTable {
    /// The block ids, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

/// What a registered block holds.
#[derive(Debug)]
struct Content {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// The bookkeeping of a pool of fixed-size blocks (the memory itself is the cache's).
#[derive(Debug)]
pub(crate) struct BlockPool {
    block_size: usize,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// Blocks holding nothing anyone can reuse.
    blank: Vec<u32>,
    /// Registered blocks no sequence holds, by release order (oldest first).
    idle: BTreeMap<u64, u32>,
    /// Each idle block's key in `idle`.
    idle_key: Vec<u64>,
    /// The next key of `idle`.
    clock: u64,
    /// Registered blocks by content hash, and what each holds.
    index: HashMap<u64, u32>,
    content: Vec<Option<Content>>,
    hasher: RandomState,
    /// Whether computed blocks are registered and shared.
    caching: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` blank blocks of `block_size` positions, prefix caching off.
    pub(crate) fn new(block_size: usize, num_blocks: usize) -> Self {
        Self {
            block_size,
            refs: vec![0; num_blocks],
            blank: (0..num_blocks as u32).rev().collect(),
            idle: BTreeMap::new(),
            idle_key: vec![0; num_blocks],
            clock: 0,
            index: HashMap::new(),
            content: (0..num_blocks).map(|_| None).collect(),
            hasher: RandomState::new(),
            caching: false,
        }
    }

    /// Turns prefix caching on or off; turning it off forgets every registered block.
    pub(crate) fn set_caching(&mut self, on: bool) {
        self.caching = on;
        if !on {
            while let Some(block) = self.pop_idle() {
                self.blank.push(block);
            }
            for block in self.index.drain().map(|(_, b)| b as usize) {
                self.content[block] = None;
            }
        }
    }

    /// Whether prefix caching is on.
    pub(crate) fn caching(&self) -> bool {
        self.caching
    }

    /// Blocks a sequence can still get: blank ones and idle registered ones.
    pub(crate) fn available(&self) -> usize {
        self.blank.len() + self.idle.len()
    }

    /// Registered blocks no sequence holds (reusable prefixes).
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Grows `table` to `blocks` blocks; returns false (taking nothing) if the pool is short.
    pub(crate) fn reserve(&mut self, table: &mut BlockTable, blocks: usize) -> bool {
        let needed = blocks.saturating_sub(table.blocks.len());
        if needed > self.available() {
            return false;
        }
        for _ in 0..needed {
            let block = match self.blank.pop() {
                Some(b) => b,
                None => {
                    let b = self.pop_idle().expect("counted as available");
                    self.forget(b);
                    b
                }
            };
            self.refs[block as usize] = 1;
            table.blocks.push(block);
        }
        true
    }

    /// Drops `table`'s hold on its blocks (last first); registered ones become idle.
    pub(crate) fn release(&mut self, table: &mut BlockTable) {
        for block in table.blocks.drain(..).rev() {
            let b = block as usize;
            self.refs[b] -= 1;
            if self.refs[b] > 0 {
                continue;
            }
            if self.content[b].is_some() {
                self.idle_key[b] = self.clock;
                self.idle.insert(self.clock, block);
                self.clock += 1;
            } else {
                self.blank.push(block);
            }
        }
        table.hashes.clear();
    }

    /// Gives an empty `table` the registered blocks that hold the start of `tokens`, and returns how
    /// many positions they cover. At least the last token is left to compute (its logits are
    /// needed), so the match stops one token short of the whole sequence.
    pub(crate) fn share_prefix(&mut self, table: &mut BlockTable, tokens: &[u32]) -> usize {
        if !table.blocks.is_empty() {
            return 0;
        }
        for (block, hash) in self.matching_prefix(tokens) {
            let b = block as usize;
            if self.refs[b] == 0 {
                self.idle.remove(&self.idle_key[b]);
            }
            self.refs[b] += 1;
            table.blocks.push(block);
            table.hashes.push(hash);
        }
        table.blocks.len() * self.block_size
    }

    /// How many positions at the start of `tokens` [`Self::share_prefix`] would give, without
    /// taking the blocks (their release order stays as it is).
    pub(crate) fn cached_prefix(&self, tokens: &[u32]) -> usize {
        self.matching_prefix(tokens).len() * self.block_size
    }

    /// The registered blocks (with their hashes) that hold the start of `tokens`, stopping one
    /// token short of the whole sequence.
    fn matching_prefix(&self, tokens: &[u32]) -> Vec<(u32, u64)> {
        let mut found = Vec::new();
        if !self.caching {
            return found;
        }
        let full = tokens.len().saturating_sub(1) / self.block_size;
        let mut parent = ROOT;
        for chunk in tokens.chunks_exact(self.block_size).take(full) {
            let hash = self.hash(parent, chunk);
            let Some(&block) = self.index.get(&hash) else {
                break;
            };
            let same = self.content[block as usize]
                .as_ref()
                .is_some_and(|c| c.parent == parent && *c.tokens == *chunk);
            if !same {
                break;
            }
            found.push((block, hash));
            parent = hash;
        }
        found
    }

    /// Registers `table`'s blocks that the first `computed` of `tokens` fill completely, so that
    /// later sequences can share them. A block whose contents another block already holds stays
    /// unregistered (it is freed as usual).
    pub(crate) fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], computed: usize) {
        if !self.caching {
            return;
        }
        let full = computed.min(tokens.len()) / self.block_size;
        while table.hashes.len() < full.min(table.blocks.len()) {
            let i = table.hashes.len();
            let parent = table.hashes.last().copied().unwrap_or(ROOT);
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = self.hash(parent, chunk);
            let block = table.blocks[i];
            if let Entry::Vacant(e) = self.index.entry(hash) {
                e.insert(block);
                self.content[block as usize] = Some(Content {
                    hash,
                    parent,
                    tokens: chunk.into(),
                });
            }
            table.hashes.push(hash);
        }
    }

    fn hash(&self, parent: u64, tokens: &[u32]) -> u64 {
        self.hasher.hash_one((parent, tokens))
    }

    /// Takes the idle block released longest ago.
    fn pop_idle(&mut self) -> Option<u32> {
        self.idle.pop_first().map(|(_, block)| block)
    }

    /// Unregisters a block whose memory is about to be reused.
    fn forget(&mut self, block: u32) {
        if let Some(c) = self.content[block as usize].take() {
            self.index.remove(&c.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of 4-position blocks with caching on.
    fn pool(blocks: usize) -> BlockPool {
        let mut p = BlockPool::new(4, blocks);
        p.set_caching(true);
        p
    }

    /// Admits `tokens` the way the engine does: share, reserve the rest, compute, commit.
    fn run(pool: &mut BlockPool, tokens: &[u32]) -> (BlockTable, usize) {
        let mut table = BlockTable::default();
        let shared = pool.share_prefix(&mut table, tokens);
        assert!(pool.reserve(&mut table, tokens.len().div_ceil(4)));
        pool.commit(&mut table, tokens, tokens.len());
        (table, shared)
    }

    #[test]
    fn a_second_sequence_shares_the_full_blocks_of_a_common_prefix() {
        let mut p = pool(8);
        let a: Vec<u32> = (0..10).collect();
        let (ta, shared) = run(&mut p, &a);
        assert_eq!(shared, 0);
        // Same first 9 tokens, then different: blocks 0 and 1 (8 positions) are shared.
        let mut b = a[..9].to_vec();
        b.extend([99, 98]);
        let (tb, shared) = run(&mut p, &b);
        assert_eq!(shared, 8);
        assert_eq!(tb.blocks()[..2], ta.blocks()[..2]);
        assert_ne!(tb.blocks()[2], ta.blocks()[2]);
        assert_eq!(p.available(), 8 - 3 - 1);
    }

    #[test]
    fn the_last_token_is_always_left_to_compute() {
        let mut p = pool(8);
        let a: Vec<u32> = (0..8).collect();
        let (mut ta, _) = run(&mut p, &a);
        p.release(&mut ta);
        // The whole 8-token sequence is cached, but only its first block is shared.
        let (_, shared) = run(&mut p, &a);
        assert_eq!(shared, 4);
    }

    #[test]
    fn a_prefix_is_shared_only_from_the_start_of_the_sequence() {
        let mut p = pool(16);
        run(&mut p, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Block 1's tokens at block 0: a different prefix.
        let (_, shared) = run(&mut p, &[5, 6, 7, 8, 1, 2, 3, 4, 9]);
        assert_eq!(shared, 0);
        // A different first block: nothing after it is shared either.
        let (_, shared) = run(&mut p, &[0, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(shared, 0);
    }

    #[test]
    fn released_prefixes_stay_until_their_memory_is_needed_tail_first() {
        let mut p = pool(4);
        let a: Vec<u32> = (0..13).collect(); // 4 blocks, the first 3 full
        let (mut ta, _) = run(&mut p, &a);
        let head = ta.blocks()[..2].to_vec();
        p.release(&mut ta);
        assert_eq!(p.available(), 4);
        assert_eq!(p.idle(), 3);
        // Two new blocks: the blank one, then the prefix's tail; its first two blocks survive.
        let mut other = BlockTable::default();
        assert!(p.reserve(&mut other, 2));
        assert_eq!(p.idle(), 2);
        let mut again = BlockTable::default();
        assert_eq!(p.share_prefix(&mut again, &a), 8);
        assert_eq!(again.blocks(), &head[..]);
    }

    #[test]
    fn looking_up_a_cached_prefix_takes_nothing_and_reorders_nothing() {
        let mut p = pool(4);
        let a: Vec<u32> = (0..9).collect(); // 3 blocks, the first 2 full
        let b: Vec<u32> = (100..109).collect();
        let (mut ta, _) = run(&mut p, &a);
        p.release(&mut ta);
        let mut tb = BlockTable::default();
        assert!(p.reserve(&mut tb, 1));
        p.commit(&mut tb, &b[..4], 4);
        p.release(&mut tb);
        // Idle, oldest release first: a's blocks (tail first), then b's.
        assert_eq!(p.cached_prefix(&a), 8);
        assert_eq!(p.cached_prefix(&b), 4);
        assert_eq!(p.cached_prefix(&[7; 9]), 0);
        assert_eq!((p.available(), p.idle()), (4, 3));
        // The look-ups did not make a's blocks recently used: a new sequence of three blocks
        // takes the blank one, then a's two, and b's block survives.
        let mut other = BlockTable::default();
        assert!(p.reserve(&mut other, 3));
        assert_eq!(p.cached_prefix(&a), 0);
        assert_eq!(p.cached_prefix(&b), 4);
    }

    #[test]
    fn a_shared_block_is_held_until_every_holder_releases_it() {
        let mut p = pool(4);
        let a: Vec<u32> = (0..6).collect();
        let (mut ta, _) = run(&mut p, &a);
        let (mut tb, shared) = run(&mut p, &a);
        assert_eq!(shared, 4);
        assert_eq!(p.available(), 1); // block 0 shared, one tail block each
        p.release(&mut ta);
        assert_eq!(p.available(), 2);
        assert_eq!(p.idle(), 0, "b still holds the shared block");
        p.release(&mut tb);
        assert_eq!(p.available(), 4);
        assert_eq!(p.idle(), 1);
    }

    #[test]
    fn without_caching_nothing_is_shared_and_turning_it_off_forgets() {
        let mut p = pool(4);
        let a: Vec<u32> = (0..6).collect();
        let (mut ta, _) = run(&mut p, &a);
        p.release(&mut ta);
        assert_eq!(p.idle(), 1);
        p.set_caching(false);
        assert_eq!(p.idle(), 0);
        assert_eq!(p.available(), 4);
        let (_, shared) = run(&mut p, &a);
        assert_eq!(shared, 0);
    }
}
