//! The dashboard feed: every broadcast frame, encoded once, in one byte
//! queue that all dashboards read from at their own pace.
//!
//! Each dashboard holds only a cursor into the shared [`Feed`], so a
//! broadcast costs one copy into the queue however many dashboards listen,
//! and a dashboard's pending output is the distance from its cursor to the
//! head. The queue is trimmed up to the slowest cursor. A dashboard that
//! falls more than the lag limit behind is cut loose: its cursor jumps to
//! the head and it is sent a fresh snapshot once its socket drains, which
//! keeps memory bounded and its view correct.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use crate::wire;

/// The shared queue of broadcast frames.
#[derive(Debug)]
pub struct Feed {
    bytes: VecDeque<u8>,
    /// Stream offset of `bytes[0]`; offsets never repeat.
    base: u64,
    /// Stream offsets where frames still in `bytes` begin.
    starts: VecDeque<u64>,
    subscribers: usize,
    scratch: Vec<u8>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    /// An empty feed.
    pub fn new() -> Feed {
        Feed {
            bytes: VecDeque::new(),
            base: 0,
            starts: VecDeque::new(),
            subscribers: 0,
            scratch: Vec::new(),
        }
    }

    /// The offset just past the newest byte.
    pub fn head(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Bytes currently queued.
    pub fn queued(&self) -> usize {
        self.bytes.len()
    }

    /// Appends a complete frame.
    pub fn publish_frame(&mut self, frame: &[u8]) {
        if self.subscribers == 0 {
            return;
        }
        self.starts.push_back(self.head());
        self.bytes.extend(frame);
    }

    /// Encodes a text message with `encode` and appends it as one frame.
    pub fn publish_text(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.subscribers == 0 {
            return;
        }
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        encode(&mut payload);
        let (header, used) = wire::text_frame_header_bytes(payload.len());
        self.starts.push_back(self.head());
        self.bytes.extend(&header[..used]);
        self.bytes.extend(&payload);
        self.scratch = payload;
    }

    /// Up to `max` bytes from `offset` on, as at most two slices.
    fn slices_from(&self, offset: u64, max: usize) -> (&[u8], &[u8]) {
        let skip = (offset - self.base) as usize;
        let (front, back) = self.bytes.as_slices();
        let (a, b) = if skip < front.len() {
            (&front[skip..], back)
        } else {
            (&back[skip - front.len()..], &back[..0])
        };
        let a = &a[..a.len().min(max)];
        let b = &b[..b.len().min(max - a.len())];
        (a, b)
    }

    /// Whether `offset` falls between frames.
    fn is_boundary(&self, offset: u64) -> bool {
        offset == self.head() || self.starts.binary_search(&offset).is_ok()
    }

    /// The end of the frame that contains `offset`.
    fn frame_end(&self, offset: u64) -> u64 {
        let next = self.starts.partition_point(|&s| s <= offset);
        self.starts.get(next).copied().unwrap_or_else(|| self.head())
    }

    /// How many frames begin at or after `from` and before `to`.
    fn frames_between(&self, from: u64, to: u64) -> u64 {
        let first = self.starts.partition_point(|&s| s < from);
        let last = self.starts.partition_point(|&s| s < to);
        (last - first) as u64
    }

    /// Copies the bytes from `offset` up to `end`.
    fn copy_range(&self, offset: u64, end: u64) -> Vec<u8> {
        let len = (end - offset) as usize;
        let (a, b) = self.slices_from(offset, len);
        [a, b].concat()
    }

    /// Forgets everything before `offset`, which no dashboard still needs.
    pub fn trim(&mut self, offset: u64) {
        let drop = offset.saturating_sub(self.base) as usize;
        let drop = drop.min(self.bytes.len());
        self.bytes.drain(..drop);
        self.base += drop as u64;
        while self.starts.front().is_some_and(|&s| s < self.base) {
            self.starts.pop_front();
        }
        if self.bytes.is_empty() && self.bytes.capacity() > 64 * 1024 {
            self.bytes.shrink_to(64 * 1024);
        }
    }
}

/// One dashboard's place in the feed.
#[derive(Debug)]
pub struct Subscriber {
    /// Next feed byte to send.
    cursor: u64,
    /// Bytes owed before the feed resumes: the HTTP upgrade answer, a
    /// snapshot, or the tail of a frame cut off by a resync.
    private: Option<(Rc<[u8]>, usize)>,
    /// Send a fresh snapshot, and resume at the head, once `private` has
    /// gone out.
    want_snapshot: bool,
    /// Whether the feed may be sent; false once the dashboard is closing.
    following: bool,
    /// `private` holds a snapshot frame, counted as a frame when it starts.
    snapshot: bool,
}

/// What a resync did, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Bytes of updates the dashboard will never see.
    pub bytes: u64,
    /// Frames the dashboard will never see.
    pub frames: u64,
}

impl Subscriber {
    /// Joins the feed at its head. `preamble` goes out first; the snapshot
    /// follows it.
    pub fn join(feed: &mut Feed, preamble: Vec<u8>) -> Subscriber {
        feed.subscribers += 1;
        let private = (!preamble.is_empty()).then(|| (preamble.into(), 0));
        Subscriber {
            cursor: feed.head(),
            private,
            want_snapshot: true,
            following: true,
            snapshot: false,
        }
    }

    /// Leaves the feed.
    pub fn leave(&mut self, feed: &mut Feed) {
        if self.following {
            feed.subscribers -= 1;
            self.following = false;
        }
    }

    /// The oldest feed offset this subscriber still needs, if any.
    pub fn needs_from(&self) -> Option<u64> {
        (self.following && !self.want_snapshot).then_some(self.cursor)
    }

    /// Whether the socket is ours alone for now: a frame is partly sent,
    /// or the upgrade answer has not gone out. Nothing else may be written
    /// until that is done.
    pub fn holds_socket(&self, feed: &Feed) -> bool {
        match &self.private {
            // Only a snapshot not yet begun sits at a frame boundary; the
            // upgrade answer and the rest of a cut-off frame do not.
            Some((_, sent)) => *sent > 0 || !self.snapshot,
            None => !feed.is_boundary(self.cursor),
        }
    }

    /// Whether anything is waiting to be written.
    pub fn has_output(&self, feed: &Feed) -> bool {
        self.private.is_some()
            || (self.following
                && (self.want_snapshot || self.cursor < feed.head()))
    }

    /// Drops queued updates when this subscriber lags more than `max_lag`
    /// bytes behind the head, arranging a fresh snapshot instead.
    pub fn check_lag(&mut self, feed: &Feed, max_lag: u64) -> Option<Dropped> {
        if !self.following || self.want_snapshot {
            return None;
        }
        let lag = feed.head() - self.cursor;
        if lag <= max_lag {
            return None;
        }
        let mut from = self.cursor;
        if self.private.is_none() && !feed.is_boundary(self.cursor) {
            // Half a frame is on the wire; the rest must follow or the
            // stream is corrupt.
            from = feed.frame_end(self.cursor);
            self.private = Some((feed.copy_range(self.cursor, from).into(), 0));
        }
        let dropped = Dropped {
            bytes: lag - (from - self.cursor),
            frames: feed.frames_between(from, feed.head()),
        };
        self.cursor = feed.head();
        self.want_snapshot = true;
        Some(dropped)
    }

    /// Stops taking updates, for a closing dashboard. A frame already
    /// begun is still finished.
    pub fn stop_following(&mut self, feed: &mut Feed) {
        // A snapshot not yet begun is dropped: nothing may follow a close.
        if self.snapshot
            && self.private.as_ref().is_some_and(|(_, sent)| *sent == 0)
        {
            self.private = None;
            self.snapshot = false;
        }
        if self.following
            && self.private.is_none()
            && !feed.is_boundary(self.cursor)
        {
            let end = feed.frame_end(self.cursor);
            self.private = Some((feed.copy_range(self.cursor, end).into(), 0));
        }
        self.want_snapshot = false;
        self.leave(feed);
    }

    /// Fills `slices` with what to write next, at most `budget` bytes,
    /// and returns how many slices it used. `snapshot` supplies the current
    /// snapshot frame when one is due.
    pub fn next_slices<'a>(
        &'a mut self,
        feed: &'a Feed,
        snapshot: impl FnOnce() -> Rc<[u8]>,
        budget: usize,
        slices: &mut [IoSlice<'a>; 3],
    ) -> usize {
        if self.private.is_none() && self.want_snapshot && self.following {
            self.private = Some((snapshot(), 0));
            self.snapshot = true;
            self.cursor = feed.head();
            self.want_snapshot = false;
        }
        let mut used = 0;
        let mut left = budget;
        if let Some((bytes, sent)) = &self.private {
            let rest = &bytes[*sent..];
            let rest = &rest[..rest.len().min(left)];
            left -= rest.len();
            slices[used] = IoSlice::new(rest);
            used += 1;
        }
        if self.following && !self.want_snapshot && left > 0 {
            let (a, b) = feed.slices_from(self.cursor, left);
            for s in [a, b] {
                if !s.is_empty() {
                    slices[used] = IoSlice::new(s);
                    used += 1;
                }
            }
        }
        used
    }

    /// Records that `n` bytes of what [`next_slices`](Self::next_slices)
    /// offered were written, and returns how many frames were begun.
    pub fn advance(&mut self, feed: &Feed, mut n: usize) -> u64 {
        let mut begun = 0;
        if let Some((bytes, sent)) = &mut self.private {
            let take = n.min(bytes.len() - *sent);
            if self.snapshot && *sent == 0 && take > 0 {
                begun += 1;
            }
            *sent += take;
            n -= take;
            if *sent == bytes.len() {
                self.private = None;
                self.snapshot = false;
            }
        }
        let from = self.cursor;
        self.cursor += n as u64;
        begun + feed.frames_between(from, self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Vec<u8> {
        wire::text_frame(text.as_bytes())
    }

    /// Writes up to `limit` bytes of what the subscriber offers.
    fn drain(
        sub: &mut Subscriber,
        feed: &Feed,
        snap: &Rc<[u8]>,
        limit: usize,
    ) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 3];
        let used =
            sub.next_slices(feed, || Rc::clone(snap), limit, &mut slices);
        let out: Vec<u8> =
            slices[..used].iter().flat_map(|s| s.iter().copied()).collect();
        let out = out[..out.len().min(limit)].to_vec();
        sub.advance(feed, out.len());
        out
    }

    #[test]
    fn a_new_subscriber_gets_preamble_snapshot_then_updates() {
        let mut feed = Feed::new();
        let snap: Rc<[u8]> = frame("snap").into();
        let mut sub = Subscriber::join(&mut feed, b"HTTP".to_vec());
        // Published before the snapshot was taken, so already part of it.
        feed.publish_frame(&frame("u0"));
        assert_eq!(drain(&mut sub, &feed, &snap, 1 << 20), b"HTTP");
        assert_eq!(drain(&mut sub, &feed, &snap, 1 << 20), frame("snap"));
        feed.publish_frame(&frame("u1"));
        let out = drain(&mut sub, &feed, &snap, 1 << 20);
        assert_eq!(out, frame("u1"));
        assert!(!sub.has_output(&feed));
    }

    #[test]
    fn trimming_keeps_what_the_slowest_cursor_needs() {
        let mut feed = Feed::new();
        let snap: Rc<[u8]> = frame("s").into();
        let mut fast = Subscriber::join(&mut feed, Vec::new());
        let mut slow = Subscriber::join(&mut feed, Vec::new());
        drain(&mut fast, &feed, &snap, 100);
        drain(&mut slow, &feed, &snap, 100);
        for i in 0..3 {
            feed.publish_frame(&frame(&format!("m{i}")));
        }
        drain(&mut fast, &feed, &snap, 100);
        drain(&mut slow, &feed, &snap, 5);
        let oldest =
            [fast.needs_from(), slow.needs_from()].into_iter().flatten().min();
        feed.trim(oldest.unwrap());
        assert_eq!(feed.queued(), 3 * 4 - 5);
        assert!(slow.holds_socket(&feed));
        let rest = drain(&mut slow, &feed, &snap, 100);
        assert_eq!(rest.len(), 7);
    }

    #[test]
    fn a_lagging_subscriber_finishes_its_frame_then_resnapshots() {
        let mut feed = Feed::new();
        let snap: Rc<[u8]> = frame("s").into();
        let mut sub = Subscriber::join(&mut feed, Vec::new());
        drain(&mut sub, &feed, &snap, 100);
        let big = frame(&"x".repeat(50));
        feed.publish_frame(&big);
        assert_eq!(drain(&mut sub, &feed, &snap, 10), big[..10]);
        for _ in 0..10 {
            feed.publish_frame(&frame("later"));
        }
        let dropped = sub.check_lag(&feed, 64).unwrap();
        assert_eq!(dropped, Dropped { bytes: 10 * 7, frames: 10 });
        // The cut-off frame's rest must go out before any control frame.
        assert!(sub.holds_socket(&feed));
        assert_eq!(sub.needs_from(), None);
        feed.trim(feed.head());
        let snap2: Rc<[u8]> = frame("fresh").into();
        let out = drain(&mut sub, &feed, &snap2, 1000);
        assert_eq!(out, big[10..]);
        let out = drain(&mut sub, &feed, &snap2, 1000);
        assert_eq!(out, frame("fresh"));
        feed.publish_frame(&frame("next"));
        assert_eq!(drain(&mut sub, &feed, &snap2, 1000), frame("next"));
    }

    #[test]
    fn frames_are_counted_when_they_start_snapshots_included() {
        let mut feed = Feed::new();
        let snap: Rc<[u8]> = frame("snap").into();
        let mut sub = Subscriber::join(&mut feed, b"HTTP".to_vec());
        let offer = |sub: &mut Subscriber, feed: &Feed| {
            let mut slices = [IoSlice::new(&[]); 3];
            sub.next_slices(feed, || Rc::clone(&snap), 100, &mut slices);
        };
        offer(&mut sub, &feed);
        assert_eq!(sub.advance(&feed, 4), 0, "the upgrade answer is no frame");
        offer(&mut sub, &feed);
        assert_eq!(sub.advance(&feed, 1), 1, "the snapshot has started");
        assert_eq!(sub.advance(&feed, snap.len() - 1), 0);
        feed.publish_frame(&frame("a"));
        feed.publish_frame(&frame("b"));
        offer(&mut sub, &feed);
        assert_eq!(sub.advance(&feed, 4), 2);
    }

    #[test]
    fn a_closing_subscriber_drops_an_unbegun_snapshot_but_not_a_preamble() {
        let mut feed = Feed::new();
        let snap: Rc<[u8]> = frame("s").into();
        let mut sub = Subscriber::join(&mut feed, b"HTTP".to_vec());
        assert!(sub.holds_socket(&feed), "nothing may precede the 101");
        assert_eq!(drain(&mut sub, &feed, &snap, 4), b"HTTP");
        let mut slices = [IoSlice::new(&[]); 3];
        sub.next_slices(&feed, || Rc::clone(&snap), 100, &mut slices);
        assert!(!sub.holds_socket(&feed), "an unbegun snapshot is a boundary");
        sub.stop_following(&mut feed);
        assert!(!sub.has_output(&feed));
    }

    #[test]
    fn nothing_is_queued_without_subscribers() {
        let mut feed = Feed::new();
        feed.publish_frame(&frame("x"));
        feed.publish_text(|out| out.extend_from_slice(b"y"));
        assert_eq!(feed.queued(), 0);
    }
}
