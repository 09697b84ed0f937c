//! Dirty-page bookkeeping: bitmaps of guest pages (one bit per 4 KiB page, in u64 words as KVM's
//! dirty log delivers them), their union, and the runs of set bits to send.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    pages: usize,
    words: Vec<u64>,
}

impl DirtyBitmap {
    pub fn new(pages: usize) -> Self {
        DirtyBitmap {
            pages,
            words: vec![0; pages.div_ceil(64)],
        }
    }

    /// Every page set (the first round sends everything that is not zero).
    pub fn full(pages: usize) -> Self {
        let mut b = Self::new(pages);
        b.words.iter_mut().for_each(|w| *w = u64::MAX);
        b.trim();
        b
    }

    /// Adopts words as KVM_GET_DIRTY_LOG returns them; extra bits past `pages` are dropped.
    pub fn from_words(pages: usize, mut words: Vec<u64>) -> Self {
        words.resize(pages.div_ceil(64), 0);
        let mut b = DirtyBitmap { pages, words };
        b.trim();
        b
    }

    fn trim(&mut self) {
        let extra = self.words.len() * 64 - self.pages;
        if extra > 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= u64::MAX >> extra;
            }
        }
    }

    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The bits, 64 pages a word, as KVM's dirty log has them.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn set(&mut self, page: usize) {
        if page < self.pages {
            self.words[page / 64] |= 1 << (page % 64);
        }
    }

    pub fn unset(&mut self, page: usize) {
        if page < self.pages {
            self.words[page / 64] &= !(1 << (page % 64));
        }
    }

    pub(crate) fn is_set(&self, page: usize) -> bool {
        page < self.pages && self.words[page / 64] & (1 << (page % 64)) != 0
    }

    /// Adds every page set in `other` (same size).
    pub fn union_with(&mut self, other: &DirtyBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Runs of consecutive set pages as (first page, page count), at most `max_run` long.
    pub fn runs(&self, max_run: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut page = 0;
        while page < self.pages {
            let w = self.words[page / 64] >> (page % 64);
            if w == 0 {
                page = (page / 64 + 1) * 64;
                continue;
            }
            page += w.trailing_zeros() as usize;
            let start = page;
            while page < self.pages && self.is_set(page) && page - start < max_run {
                page += 1;
            }
            out.push((start, page - start));
        }
        out
    }
}

/// True when a page holds only zero bytes (it need not be sent: fresh guest memory is zero).
pub(crate) fn is_zero_page(page: &[u8]) -> bool {
    // Word compares: fast enough to run over all guest memory in round 0.
    let words = page.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_and_cap() {
        let mut b = DirtyBitmap::new(200);
        for p in [0, 1, 2, 63, 64, 65, 130, 199] {
            b.set(p);
        }
        assert_eq!(b.runs(1000), vec![(0, 3), (63, 3), (130, 1), (199, 1)]);
        assert_eq!(
            b.runs(2),
            vec![(0, 2), (2, 1), (63, 2), (65, 1), (130, 1), (199, 1)]
        );
        assert_eq!(b.count(), 8);
        b.set(500);
        assert_eq!(b.count(), 8, "out of range pages are ignored");
    }

    #[test]
    fn full_union_and_kvm_words() {
        let f = DirtyBitmap::full(70);
        assert_eq!(f.count(), 70);
        assert_eq!(f.runs(usize::MAX), vec![(0, 70)]);
        let k = DirtyBitmap::from_words(70, vec![0b1010, u64::MAX, 7]);
        assert_eq!(k.count(), 2 + 6);
        let mut u = DirtyBitmap::new(70);
        u.set(3);
        u.set(69);
        u.union_with(&k);
        assert_eq!(u.count(), 2 + 6);
        assert!(u.is_set(69) && u.is_set(1) && !u.is_set(0));
    }

    #[test]
    fn zero_pages() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero_page(&p));
        p[4095] = 1;
        assert!(!is_zero_page(&p));
    }
}
