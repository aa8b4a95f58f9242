//! The file import graph of the library (test code left out) and its circles: Tarjan's
//! strongly connected components, each shown as one concrete cycle of `file:line` steps.

use std::collections::BTreeMap;

use crate::imports::{absolute, refs, target};
use crate::tree::Tree;

/// An edge: `from` refers to something in `to`, first written at `line` as `written`.
#[derive(Clone)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub line: usize,
    pub written: String,
}

/// One edge per (from, to) pair, the first place it is written. Only paths count: a
/// `mod child;` in a parent declares the child, it does not depend on it.
pub fn edges(tree: &Tree) -> Vec<Edge> {
    let mut seen: BTreeMap<(usize, usize), Edge> = BTreeMap::new();
    for (from, file) in tree.files.iter().enumerate() {
        if file.module.is_none() || file.is_test_file() || file.path == "src/lib.rs" {
            continue;
        }
        for r in refs(file) {
            let Some(path) = absolute(file, &r) else {
                continue;
            };
            let Some(to) = target(tree, &path) else {
                continue;
            };
            if to == from || tree.files[to].path == "src/lib.rs" {
                continue;
            }
            let line = file.line_of(r.offset);
            seen.entry((from, to)).or_insert(Edge {
                from,
                to,
                line,
                written: r.written(),
            });
        }
    }
    seen.into_values().collect()
}

/// Files caught in one circle, and the shortest cycle through each of them (repeats left out).
pub struct Circle {
    pub files: Vec<usize>,
    pub cycles: Vec<Vec<Edge>>,
}

/// Every circle: a strongly connected component of two or more files.
pub fn circles(n: usize, edges: &[Edge]) -> Vec<Circle> {
    let mut adj: Vec<Vec<&Edge>> = vec![Vec::new(); n];
    for e in edges {
        adj[e.from].push(e);
    }
    let comps = tarjan(n, &adj);
    comps
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|comp| {
            let mut cycles: Vec<Vec<Edge>> = Vec::new();
            for &v in &comp {
                let c = cycle_through(v, &comp, &adj);
                let key = |c: &[Edge]| {
                    let mut k: Vec<(usize, usize)> = c.iter().map(|e| (e.from, e.to)).collect();
                    k.sort();
                    k
                };
                if !cycles.iter().any(|o| key(o) == key(&c)) {
                    cycles.push(c);
                }
            }
            Circle {
                files: comp,
                cycles,
            }
        })
        .collect()
}

fn tarjan(n: usize, adj: &[Vec<&Edge>]) -> Vec<Vec<usize>> {
    struct S<'a> {
        adj: &'a [Vec<&'a Edge>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut S, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on[v] = true;
        for e in s.adj[v].clone() {
            match s.index[e.to] {
                None => {
                    visit(s, e.to);
                    s.low[v] = s.low[v].min(s.low[e.to]);
                }
                Some(i) if s.on[e.to] => s.low[v] = s.low[v].min(i),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = S {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest cycle from `start` back to itself inside `comp` (breadth first).
fn cycle_through(start: usize, comp: &[usize], adj: &[Vec<&Edge>]) -> Vec<Edge> {
    let mut prev: BTreeMap<usize, Edge> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for e in &adj[v] {
            if !comp.contains(&e.to) {
                continue;
            }
            if e.to == start {
                let mut cycle = vec![(*e).clone()];
                let mut at = v;
                while at != start {
                    let step = prev[&at].clone();
                    at = step.from;
                    cycle.push(step);
                }
                cycle.reverse();
                return cycle;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = prev.entry(e.to) {
                slot.insert((*e).clone());
                queue.push_back(e.to);
            }
        }
    }
    unreachable!(
        "a strongly connected component of two or more files has a cycle through each of them"
    )
}
