//! Maximum flow (Dinic's algorithm) for attention flow.

use std::collections::VecDeque;

struct Edge {
    to: usize,
    cap: f64,
}

/// Maximum flow from `source` to `sink` in a graph of `n` nodes with directed `edges`
/// `(from, to, capacity)`.
pub fn max_flow(n: usize, edges: &[(usize, usize, f64)], source: usize, sink: usize) -> f64 {
    if source == sink {
        return 0.0;
    }
    let mut graph: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut es: Vec<Edge> = Vec::with_capacity(edges.len() * 2);
    for &(u, v, c) in edges {
        graph[u].push(es.len());
        es.push(Edge { to: v, cap: c });
        graph[v].push(es.len());
        es.push(Edge { to: u, cap: 0.0 });
    }
    let eps = 1e-12;
    let mut flow = 0.0;
    loop {
        // BFS levels.
        let mut level = vec![usize::MAX; n];
        level[source] = 0;
        let mut q = VecDeque::from([source]);
        while let Some(u) = q.pop_front() {
            for &e in &graph[u] {
                if es[e].cap > eps && level[es[e].to] == usize::MAX {
                    level[es[e].to] = level[u] + 1;
                    q.push_back(es[e].to);
                }
            }
        }
        if level[sink] == usize::MAX {
            return flow;
        }
        let mut it = vec![0usize; n];
        loop {
            let pushed = dfs(
                source,
                sink,
                f64::INFINITY,
                &graph,
                &mut es,
                &level,
                &mut it,
                eps,
            );
            if pushed <= eps {
                break;
            }
            flow += pushed;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn dfs(
    u: usize,
    sink: usize,
    f: f64,
    graph: &[Vec<usize>],
    es: &mut [Edge],
    level: &[usize],
    it: &mut [usize],
    eps: f64,
) -> f64 {
    if u == sink {
        return f;
    }
    while it[u] < graph[u].len() {
        let e = graph[u][it[u]];
        let v = es[e].to;
        if es[e].cap > eps && level[v] == level[u] + 1 {
            let d = dfs(v, sink, f.min(es[e].cap), graph, es, level, it, eps);
            if d > eps {
                es[e].cap -= d;
                es[e ^ 1].cap += d;
                return d;
            }
        }
        it[u] += 1;
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_max_flow() {
        // CLRS figure 26.1: maximum flow 23.
        let e = [
            (0, 1, 16.0),
            (0, 2, 13.0),
            (1, 3, 12.0),
            (2, 1, 4.0),
            (2, 4, 14.0),
            (3, 2, 9.0),
            (3, 5, 20.0),
            (4, 3, 7.0),
            (4, 5, 4.0),
        ];
        assert!((max_flow(6, &e, 0, 5) - 23.0).abs() < 1e-9);
    }
}
