//! Disjoint sets (union-find) over elements `0 .. n`: the connected components of the
//! near-duplicate graph. Union by size and path halving keep every operation near constant
//! time; both loops are iterative, so a long chain cannot overflow the stack.

/// Disjoint sets over `0 .. n`.
#[derive(Clone, Debug)]
pub struct UnionFind {
    /// The parent of each element; a root is its own parent.
    parent: Vec<u32>,
    /// The number of elements under each root (meaningless for non-roots).
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` singletons.
    ///
    /// # Panics
    /// If `n` exceeds `u32::MAX`.
    pub fn new(n: usize) -> Self {
        assert!(n <= u32::MAX as usize, "union-find over {n} elements: indices are u32");
        Self { parent: (0..n as u32).collect(), size: vec![1; n] }
    }

    /// The root of `x`'s set, halving the path on the way.
    ///
    /// # Panics
    /// If `x >= len()`.
    pub fn find(&mut self, x: usize) -> usize {
        let mut x = x;
        while self.parent[x] as usize != x {
            let grandparent = self.parent[self.parent[x] as usize];
            self.parent[x] = grandparent;
            x = grandparent as usize;
        }
        x
    }

    /// Joins the sets of `a` and `b`, the smaller under the larger. True if they were apart.
    ///
    /// # Panics
    /// If `a` or `b` is `>= len()`.
    pub fn union(&mut self, a: usize, b: usize) -> bool {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        let (big, small) = if self.size[a] >= self.size[b] { (a, b) } else { (b, a) };
        self.parent[small] = big as u32;
        self.size[big] += self.size[small];
        true
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    /// True if there are no elements.
    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// For every element, the smallest index of its component (the deterministic
    /// representative, independent of the order of the unions).
    pub fn representatives(&mut self) -> Vec<u32> {
        let n = self.len();
        // the first element met of each root's set is its smallest, as i ascends
        let mut smallest_of_root = vec![u32::MAX; n];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let root = self.find(i);
            if smallest_of_root[root] == u32::MAX {
                smallest_of_root[root] = i as u32;
            }
            out.push(smallest_of_root[root]);
        }
        out
    }

    /// Number of components.
    pub fn n_components(&mut self) -> usize {
        (0..self.len()).filter(|&i| self.find(i) == i).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Independent reference: breadth-first search over adjacency lists, each component labelled
    /// with the element it starts from. Starts go in ascending order, so that is the smallest.
    fn components_by_search(n: usize, edges: &[(usize, usize)]) -> Vec<u32> {
        let mut adjacent = vec![Vec::new(); n];
        for &(a, b) in edges {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
        let mut label = vec![u32::MAX; n];
        for start in 0..n {
            if label[start] != u32::MAX {
                continue;
            }
            label[start] = start as u32;
            let mut queue = std::collections::VecDeque::from([start]);
            while let Some(x) = queue.pop_front() {
                for &y in &adjacent[x] {
                    if label[y] == u32::MAX {
                        label[y] = start as u32;
                        queue.push_back(y);
                    }
                }
            }
        }
        label
    }

    /// Unions every edge; checks the representatives and the component count against the
    /// search, and that `union` said "merged" exactly `n - components` times.
    fn check(n: usize, edges: &[(usize, usize)], case: &str) {
        let mut sets = UnionFind::new(n);
        let merges = edges.iter().filter(|&&(a, b)| sets.union(a, b)).count();
        let want = components_by_search(n, edges);
        let mut distinct = want.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(sets.representatives(), want, "{case}: representatives");
        assert_eq!(sets.n_components(), distinct.len(), "{case}: component count");
        assert_eq!(merges, n - distinct.len(), "{case}: merges reported by union");
        // every pair of an edge shares a root
        for &(a, b) in edges {
            assert_eq!(sets.find(a), sets.find(b), "{case}: edge {a}-{b} split");
        }
    }

    #[test]
    fn components_match_breadth_first_search_on_random_graphs() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for n in [2, 3, 10, 100, 1000, 5000] {
            // from mostly singletons, through the giant-component threshold, to one component
            for edges_per_element in [0.1, 0.5, 1.0, 3.0] {
                let m = (n as f64 * edges_per_element) as usize;
                let mut edges: Vec<(usize, usize)> =
                    (0..m).map(|_| (rng.random_range(0..n), rng.random_range(0..n))).collect();
                // self-loops and repeated edges, both directions
                for i in 0..m / 10 {
                    let x = rng.random_range(0..n);
                    edges.push((x, x));
                    let (a, b) = edges[i];
                    edges.push((b, a));
                    edges.push((a, b));
                }
                check(n, &edges, &format!("n {n}, {} edges", edges.len()));
            }
        }
    }

    #[test]
    fn worst_case_chains_stay_correct() {
        let n = 100_000;
        let ascending: Vec<(usize, usize)> = (0..n - 1).map(|i| (i, i + 1)).collect();
        let flipped: Vec<(usize, usize)> = (0..n - 1).map(|i| (i + 1, i)).collect();
        let descending: Vec<(usize, usize)> = (0..n - 1).rev().map(|i| (i + 1, i)).collect();
        let star: Vec<(usize, usize)> = (1..n).map(|i| (i, 0)).collect();
        // two interleaved chains (even and odd), joined at the very end
        let mut two_chains: Vec<(usize, usize)> = (0..n - 2).map(|i| (i + 2, i)).collect();
        two_chains.push((n - 1, n - 2));
        for (name, edges) in [
            ("ascending chain", ascending),
            ("flipped chain", flipped),
            ("descending chain", descending),
            ("star", star),
            ("two chains", two_chains),
        ] {
            check(n, &edges, name);
        }
        // the two chains before they are joined
        let evens_and_odds: Vec<(usize, usize)> = (0..n - 2).map(|i| (i, i + 2)).collect();
        check(n, &evens_and_odds, "two separate chains");
    }

    #[test]
    fn empty_and_single_element_sets() {
        let mut none = UnionFind::new(0);
        assert!(none.is_empty());
        assert_eq!(none.len(), 0);
        assert_eq!(none.representatives(), Vec::<u32>::new());
        assert_eq!(none.n_components(), 0);
        check(0, &[], "n 0");

        let mut one = UnionFind::new(1);
        assert!(!one.is_empty() && one.len() == 1);
        assert!(!one.union(0, 0), "a self-loop merges nothing");
        assert_eq!(one.representatives(), vec![0]);
        assert_eq!(one.n_components(), 1);
        check(1, &[(0, 0), (0, 0)], "n 1 with self-loops");
    }
}
