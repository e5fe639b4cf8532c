//! Route matching: the most specific host pattern wins (exact, then the longest `*.suffix`,
//! then `*`), like nginx picks a virtual server first; among routes of equally specific hosts,
//! the longest path match wins (an exact path beats a prefix of the same length).

use crate::config::{HostPattern, PathPattern, Route};

pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        Router { routes }
    }

    /// Index of the matching route. `host` has no port; `path` is the request path.
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        // Path parameters (`;jsessionid=…`) do not take part in matching.
        let path = path.split(';').next().unwrap_or(path);
        let mut best: Option<((usize, usize), usize)> = None;
        for (i, route) in self.routes.iter().enumerate() {
            let Some(host_score) = route.hosts.iter().filter_map(|p| host_score(p, host)).max()
            else {
                continue;
            };
            let Some(path_score) = route.paths.iter().filter_map(|p| path_score(p, path)).max()
            else {
                continue;
            };
            let score = (host_score, path_score);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }
}

fn host_score(pattern: &HostPattern, host: &str) -> Option<usize> {
    match pattern {
        HostPattern::Any => Some(0),
        HostPattern::Exact(name) => host.eq_ignore_ascii_case(name).then_some(usize::MAX),
        HostPattern::Suffix(suffix) => {
            let (h, s) = (host.as_bytes(), suffix.as_bytes());
            (h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)).then_some(s.len())
        }
    }
}

fn path_score(pattern: &PathPattern, path: &str) -> Option<usize> {
    match pattern {
        PathPattern::Exact(p) => (path == &**p).then_some(p.len() * 2 + 1),
        PathPattern::Prefix(p) => {
            let matches = path.starts_with(&**p)
                || (p.len() > 1 && p.ends_with('/') && path == &p[..p.len() - 1]);
            matches.then_some(p.len() * 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: Vec<HostPattern>, paths: Vec<PathPattern>, cluster: usize) -> Route {
        Route {
            hosts,
            paths,
            cluster,
        }
    }

    #[test]
    fn most_specific_wins() {
        let r = Router::new(vec![
            route(
                vec![HostPattern::Any],
                vec![PathPattern::Prefix("/".into())],
                0,
            ),
            route(
                vec![HostPattern::Any],
                vec![PathPattern::Prefix("/app/".into())],
                1,
            ),
            route(
                vec![HostPattern::Suffix(".example.com".into())],
                vec![PathPattern::Prefix("/".into())],
                2,
            ),
            route(
                vec![HostPattern::Exact("a.example.com".into())],
                vec![PathPattern::Exact("/login".into())],
                3,
            ),
        ]);
        assert_eq!(r.find("other", "/x"), Some(0));
        assert_eq!(r.find("other", "/app/x"), Some(1));
        assert_eq!(r.find("other", "/app"), Some(1));
        assert_eq!(r.find("b.example.com", "/app/x"), Some(2));
        assert_eq!(r.find("A.Example.com", "/login;jsessionid=1"), Some(3));
        assert_eq!(r.find("a.example.com", "/login2"), Some(2));
        assert_eq!(r.find("example.com", "/x"), Some(0));
    }

    #[test]
    fn no_match_is_none() {
        let r = Router::new(vec![route(
            vec![HostPattern::Exact("a".into())],
            vec![PathPattern::Prefix("/".into())],
            0,
        )]);
        assert_eq!(r.find("b", "/"), None);
    }
}
