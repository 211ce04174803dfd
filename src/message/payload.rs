//! [`Payload`]: what a call, a cast or a reply carries. Any `Send + 'static` value; a
//! small one is stored inside the message, a larger one in a box.
//!
//! The seed typed payloads as `Box<dyn Any + Send>`, so every cast allocated its value on
//! the sending thread and freed it on the receiving one, even for a `u64`. A `Payload`
//! keeps the seed's verbs (`downcast`, `downcast_ref`, `reply_to.send(Box::new(r))`)
//! and stores a value of at most [`Payload::INLINE_BYTES`] bytes (three machine words)
//! and alignment at most [`Payload::INLINE_ALIGN`] in place: a `u64`, a pid, a `String`,
//! a pair of words. Anything larger or more aligned is boxed as before.
//!
//! # When it allocates
//!
//! | operation | small value (inline) | large value | made from a `Box` |
//! |---|---|---|---|
//! | [`Payload::new`] | never | one `Box::new` | — |
//! | `From<Box<T>>`, `From<Box<dyn Any + Send>>` | — | — | never: the box is kept as it is |
//! | [`take`](Payload::take) | never | frees the box | frees the box |
//! | [`downcast`](Payload::downcast) | one `Box::new` (none if zero-sized) | never | never |
//! | [`into_box`](Payload::into_box) | one `Box::new` (none if zero-sized) | never | never |
//! | `downcast_ref`, `downcast_mut`, `is`, `type_id`, moving it | never | never | never |
//! | drop | never | frees the box | frees the box |
//!
//! # Invariants
//!
//! 1. **`vtable` says what `data` holds.** With `InlineOf::<T>::VTABLE`, `data` starts
//!    with a live, initialised `T`, and `T` fits (`Payload::fits_inline::<T>()`). With
//!    `BOXED`, `data` starts with a live `Box<dyn Any + Send>`. Nothing else ever sits
//!    in `data`, and `vtable` never changes after construction.
//! 2. **One owner, one drop.** The value belongs to the `Payload`: [`Drop`] drops it in
//!    place, and every method that moves it out (`take`, `downcast`, `into_box`) first
//!    wraps `self` in `ManuallyDrop`, so the value is dropped or moved exactly once.
//!    `tests/payload.rs` counts the drops through every path a message takes.
//! 3. **Moving a `Payload` moves the value.** A move copies `data` bit for bit, which is
//!    how Rust moves any value; a `T` given by value cannot borrow from itself, so it
//!    stays valid at its new address. `data` is a `MaybeUninit`, so the copy keeps
//!    every byte, padding and pointer provenance included.
//! 4. **`Send`, not `Sync`, as `Box<dyn Any + Send>` was.** Every constructor requires
//!    `T: Send` (or takes a `Box<dyn Any + Send>`), which makes the derived `Send`
//!    sound. `downcast_ref` hands out `&T` without requiring `T: Sync`, so `Payload`
//!    must not be `Sync`: the `PhantomData<Box<dyn Any + Send>>` marker gives it exactly
//!    the auto traits the seed's type had (`Send`, `Unpin`; not `Sync`, not
//!    `UnwindSafe`). A compile-time check below keeps it so.
//!
//! A payload is never shared between threads: it moves, inside its message, through a
//! mailbox lane or a reply slot, whose publication (and loom models) order the write of
//! the whole message before its read. Nothing here is atomic.
#![allow(unsafe_code)]

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop, MaybeUninit};

/// Machine words of inline storage.
const INLINE_WORDS: usize = 3;

/// The inline storage: three words, aligned to 8 bytes on every target (so a `u64` or an
/// `f64` fits on 32-bit targets too).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Inline(MaybeUninit<[usize; INLINE_WORDS]>);

impl Inline {
    const UNINIT: Inline = Inline(MaybeUninit::uninit());

    fn as_ptr<T>(&self) -> *const T {
        self.0.as_ptr().cast()
    }

    fn as_mut_ptr<T>(&mut self) -> *mut T {
        self.0.as_mut_ptr().cast()
    }
}

/// What a `Payload` knows about the value in its `data` (invariant 1).
struct VTable {
    /// `Some(TypeId::of::<T>)` when `data` holds a `T` inline; `None` when it holds a
    /// `Box<dyn Any + Send>` (which knows its own type).
    inline_type_id: Option<fn() -> TypeId>,
    /// Drops the value; `None` when dropping it does nothing (a `u64`), so that such a
    /// payload's drop is one load and one branch.
    drop_value: Option<unsafe fn(Inline)>,
    /// Moves the value out into a box (allocates for an inline value).
    into_box: unsafe fn(Inline) -> Box<dyn Any + Send>,
}

// Why the vtable's functions take the storage by value (a copy of three words, which
// moves the value: invariant 3) rather than a pointer into the payload: a pointer
// handed to a function unknown to the optimiser escapes, and with it the whole message
// around the payload. Every function that may drop a message then has to be given a
// copy of it: with `*mut Inline` here, the engine copied each 168-byte envelope twice
// on its way to a mailbox (callgrind, `peers --one routed-ours`).

/// The vtable of a boxed payload.
static BOXED: VTable = VTable {
    inline_type_id: None,
    drop_value: Some(drop_boxed),
    into_box: read_boxed,
};

/// # Safety
///
/// `data` holds a live `Box<dyn Any + Send>`, which the caller gives up.
unsafe fn drop_boxed(data: Inline) {
    // SAFETY: forwarded to the caller; the box is dropped (freed) here, once.
    drop(unsafe { read_boxed(data) });
}

/// # Safety
///
/// `data` holds a live `Box<dyn Any + Send>`, which the caller gives up.
unsafe fn read_boxed(data: Inline) -> Box<dyn Any + Send> {
    // SAFETY: the caller's contract; `Inline` is aligned and large enough for a box
    // (checked by `fits_inline` in `BOX_FITS` below).
    unsafe { data.as_ptr::<Box<dyn Any + Send>>().read() }
}

/// A box must fit the inline storage, since a boxed payload keeps it there.
const _BOX_FITS: () = assert!(Payload::fits_inline::<Box<dyn Any + Send>>());

/// The vtable of an inline `T`, as a constant so that each `T` has one `'static` copy.
struct InlineOf<T>(PhantomData<T>);

impl<T: Any + Send> InlineOf<T> {
    const VTABLE: &'static VTable = &VTable {
        inline_type_id: Some(TypeId::of::<T>),
        drop_value: if mem::needs_drop::<T>() {
            Some(drop_inline::<T>)
        } else {
            None
        },
        into_box: box_inline::<T>,
    };
}

/// # Safety
///
/// `data` holds a live `T`, which the caller gives up.
unsafe fn drop_inline<T>(mut data: Inline) {
    // SAFETY: the caller's contract: a live `T`, dropped here once.
    unsafe { data.as_mut_ptr::<T>().drop_in_place() }
}

/// # Safety
///
/// `data` holds a live `T`, which the caller gives up.
unsafe fn box_inline<T: Any + Send>(data: Inline) -> Box<dyn Any + Send> {
    // SAFETY: the caller's contract: a live `T`, moved out here once.
    Box::new(unsafe { data.as_ptr::<T>().read() })
}

/// A call's, cast's or reply's value: any `Send + 'static` value, stored inline when it
/// is at most [`INLINE_BYTES`](Self::INLINE_BYTES) bytes with alignment at most
/// [`INLINE_ALIGN`](Self::INLINE_ALIGN), boxed otherwise. The module docs list when each
/// operation allocates: in short, a small value never does unless asked for a `Box`.
///
/// It answers the seed's `Box<dyn Any + Send>` verbs: [`downcast`](Self::downcast),
/// [`downcast_ref`](Self::downcast_ref), [`downcast_mut`](Self::downcast_mut),
/// [`is`](Self::is), and is made from a `Box` (`reply_to.send(Box::new(r))`). Its own
/// by-value accessor, [`take`](Self::take), never allocates.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::Payload;
///
/// let p = Payload::new(42u64);
/// assert!(p.is_inline()); // no allocation
/// assert_eq!(p.downcast_ref::<u64>(), Some(&42));
/// let p = p.take::<u32>().unwrap_err(); // the wrong type hands it back
/// assert_eq!(p.take::<u64>().unwrap(), 42);
///
/// // A `Box` stays the box it was: no copy, and `downcast` gives it back.
/// let p = Payload::from(Box::new([0u8; 64]));
/// assert!(!p.is_inline());
/// let b: Box<[u8; 64]> = p.downcast().unwrap();
/// # let _ = b;
/// ```
pub struct Payload {
    /// What `data` holds (invariant 1).
    vtable: &'static VTable,
    /// The inline value, or the box.
    data: Inline,
    /// `Box<dyn Any + Send>`'s auto traits (invariant 4).
    _auto_traits: PhantomData<Box<dyn Any + Send>>,
}

// Invariant 4, checked at compile time: this constant is ambiguous (and fails to build)
// if `Payload` is `Sync`.
const _NOT_SYNC: fn() = || {
    trait AmbiguousIfSync<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    <Payload as AmbiguousIfSync<_>>::check();
};
const _SEND: fn() = || {
    fn send<T: Send>() {}
    send::<Payload>();
};

// ===== impl Payload =====

impl Payload {
    /// The largest value, in bytes, stored inline: three machine words (24 bytes on
    /// 64-bit targets).
    pub const INLINE_BYTES: usize = mem::size_of::<Inline>();

    /// The largest alignment stored inline (8). A type aligned to 16 (`u128` on some
    /// targets, SIMD vectors) is boxed whatever its size.
    pub const INLINE_ALIGN: usize = mem::align_of::<Inline>();

    /// Whether a `T` is stored inline (no allocation).
    ///
    /// ```
    /// use terraphim_agent_messaging::{AgentPid, Payload};
    ///
    /// assert!(Payload::fits_inline::<u64>());
    /// assert!(Payload::fits_inline::<AgentPid>());
    /// assert!(Payload::fits_inline::<String>());
    /// assert!(!Payload::fits_inline::<[u64; 4]>());
    /// ```
    pub const fn fits_inline<T>() -> bool {
        mem::size_of::<T>() <= Self::INLINE_BYTES && mem::align_of::<T>() <= Self::INLINE_ALIGN
    }

    /// A payload holding `value`: inline if it [fits](Self::fits_inline), otherwise in a
    /// new box.
    #[inline]
    pub fn new<T: Any + Send>(value: T) -> Payload {
        if Self::fits_inline::<T>() {
            let mut data = Inline::UNINIT;
            // SAFETY: `T` fits `data` in size and alignment (checked above); writing
            // it and naming `T`'s vtable establishes invariant 1.
            unsafe { data.as_mut_ptr::<T>().write(value) };
            Payload {
                vtable: InlineOf::<T>::VTABLE,
                data,
                _auto_traits: PhantomData,
            }
        } else {
            Payload::boxed(Box::new(value))
        }
    }

    /// A payload keeping `value` as it is.
    #[inline]
    fn boxed(value: Box<dyn Any + Send>) -> Payload {
        let mut data = Inline::UNINIT;
        // SAFETY: a box fits `data` (`_BOX_FITS`); with `BOXED` this is invariant 1.
        unsafe { data.as_mut_ptr::<Box<dyn Any + Send>>().write(value) };
        Payload {
            vtable: &BOXED,
            data,
            _auto_traits: PhantomData,
        }
    }

    /// Whether the value is stored inline: `true` for a small value made with
    /// [`new`](Self::new), `false` for a large one or one made from a `Box`.
    pub fn is_inline(&self) -> bool {
        self.vtable.inline_type_id.is_some()
    }

    /// The `TypeId` of the value inside (never of the box around it).
    pub fn type_id(&self) -> TypeId {
        match (self.vtable.inline_type_id, self.as_box()) {
            (Some(type_id), _) => type_id(),
            // `(**b)`: the value's type, not `Box`'s.
            (None, Some(b)) => (**b).type_id(),
            (None, None) => unreachable!("a payload is inline or boxed"),
        }
    }

    /// Whether the value is a `T`.
    #[inline]
    pub fn is<T: Any>(&self) -> bool {
        self.type_id() == TypeId::of::<T>()
    }

    /// Whether `data` holds a `T` inline.
    #[inline]
    fn holds_inline<T: Any>(&self) -> bool {
        // A `T` that does not fit is never inline: the test folds away for it.
        Self::fits_inline::<T>()
            && self
                .vtable
                .inline_type_id
                .is_some_and(|type_id| type_id() == TypeId::of::<T>())
    }

    /// The box of a boxed payload; `None` if the value is inline.
    #[inline]
    fn as_box(&self) -> Option<&Box<dyn Any + Send>> {
        if self.is_inline() {
            return None;
        }
        // SAFETY: not inline, so `vtable` is `BOXED` and `data` holds a live box
        // (invariant 1), borrowed with `self`.
        Some(unsafe { &*self.data.as_ptr::<Box<dyn Any + Send>>() })
    }

    /// The box of a boxed payload, given up by it; the payload back if it is inline.
    #[inline]
    fn into_boxed(self) -> Result<Box<dyn Any + Send>, Payload> {
        if self.is_inline() {
            return Err(self);
        }
        let this = ManuallyDrop::new(self);
        // SAFETY: not inline, so `data` holds a live box (invariant 1); `this` is never
        // dropped, so the box moves out once (invariant 2).
        Ok(unsafe { this.data.as_ptr::<Box<dyn Any + Send>>().read() })
    }

    /// A reference to the value if it is a `T`.
    #[inline]
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        if self.holds_inline::<T>() {
            // SAFETY: `data` holds a live `T` (invariant 1), borrowed with `self`.
            Some(unsafe { &*self.data.as_ptr::<T>() })
        } else {
            self.as_box()?.downcast_ref::<T>()
        }
    }

    /// A mutable reference to the value if it is a `T`.
    #[inline]
    pub fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        if self.holds_inline::<T>() {
            // SAFETY: `data` holds a live `T` (invariant 1), borrowed mutably with `self`.
            Some(unsafe { &mut *self.data.as_mut_ptr::<T>() })
        } else if self.is_inline() {
            None
        } else {
            // SAFETY: as in `as_box`: not inline, so `data` holds a live box; `&mut
            // self` makes this the only borrow.
            let b = unsafe { &mut *self.data.as_mut_ptr::<Box<dyn Any + Send>>() };
            b.downcast_mut::<T>()
        }
    }

    /// The value, if it is a `T`; otherwise the payload is handed back unchanged.
    ///
    /// Never allocates: an inline value is moved out as it is; a boxed one is moved out
    /// of its box, which is freed.
    ///
    /// ```
    /// use terraphim_agent_messaging::{AgentMessage, AgentPid};
    ///
    /// if let AgentMessage::Cast { payload, .. } = AgentMessage::cast(AgentPid::nil(), 7u64) {
    ///     assert_eq!(payload.take::<u64>().unwrap(), 7);
    /// }
    /// ```
    #[inline]
    pub fn take<T: Any>(self) -> Result<T, Payload> {
        if self.holds_inline::<T>() {
            let this = ManuallyDrop::new(self);
            // SAFETY: `data` holds a live `T` (invariant 1); `this` is never dropped,
            // so the `T` is moved out exactly once (invariant 2).
            return Ok(unsafe { this.data.as_ptr::<T>().read() });
        }
        match self.into_boxed()?.downcast::<T>() {
            Ok(b) => Ok(*b),
            Err(b) => Err(Payload::boxed(b)),
        }
    }

    /// The value in a box, if it is a `T`; otherwise the payload is handed back
    /// unchanged (the seed's `Box<dyn Any>::downcast`).
    ///
    /// A boxed payload's box is handed over as it is; an inline value is moved into a
    /// new box (one allocation, none for a zero-sized `T`). [`take`](Self::take) gives
    /// the value without a box.
    #[inline]
    pub fn downcast<T: Any>(self) -> Result<Box<T>, Payload> {
        match self.into_boxed() {
            Ok(b) => b.downcast::<T>().map_err(Payload::boxed),
            Err(inline) => inline.take::<T>().map(Box::new),
        }
    }

    /// The value as a `Box<dyn Any + Send>`, for code written against the seed's type. A
    /// boxed payload gives its box; an inline value is moved into a new box (one
    /// allocation, none if zero-sized).
    pub fn into_box(self) -> Box<dyn Any + Send> {
        let this = ManuallyDrop::new(self);
        // SAFETY: `into_box` is the vtable's own function for what `data` holds
        // (invariant 1); `this` is never dropped, so the value moves out once
        // (invariant 2).
        unsafe { (this.vtable.into_box)(this.data) }
    }
}

impl Drop for Payload {
    #[inline]
    fn drop(&mut self) {
        if let Some(drop_value) = self.vtable.drop_value {
            // SAFETY: the vtable's own function for what `data` holds (invariant 1),
            // given a copy of it (a move: invariant 3); `drop` runs once and nothing
            // reads `data` after it (invariant 2).
            unsafe { drop_value(self.data) }
        }
    }
}

impl fmt::Debug for Payload {
    /// `Any { .. }`, as `Box<dyn Any + Send>` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Any").finish_non_exhaustive()
    }
}

impl<T: Any + Send> From<Box<T>> for Payload {
    /// Keeps the box: no copy, and [`downcast`](Payload::downcast) hands the same box
    /// back. For a small `T`, [`Payload::new`] of the value itself allocates nothing.
    #[inline]
    fn from(value: Box<T>) -> Payload {
        Payload::boxed(value)
    }
}

impl From<Box<dyn Any + Send>> for Payload {
    /// Keeps the box (no copy): the seed's payload type as it is.
    #[inline]
    fn from(value: Box<dyn Any + Send>) -> Payload {
        Payload::boxed(value)
    }
}

impl From<Box<dyn Any + Send + Sync>> for Payload {
    /// Keeps the box (no copy).
    #[inline]
    fn from(value: Box<dyn Any + Send + Sync>) -> Payload {
        Payload::boxed(value)
    }
}

impl From<Payload> for Box<dyn Any + Send> {
    /// [`Payload::into_box`].
    fn from(value: Payload) -> Box<dyn Any + Send> {
        value.into_box()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Drops of `Counted` on this test's thread.
        static DROPS: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts its drops (per thread, so parallel tests do not mix).
    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.with(|d| d.set(d.get() + 1));
        }
    }

    fn drops() -> usize {
        DROPS.with(Cell::get)
    }

    /// A `Counted` too large to be inline.
    struct BigCounted(#[allow(dead_code)] [u64; 8], Counted);

    #[test]
    fn sizes() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(Payload::INLINE_BYTES, 24);
        assert!(Payload::INLINE_BYTES >= INLINE_WORDS * mem::size_of::<usize>());
        assert_eq!(Payload::INLINE_ALIGN, 8);
        assert_eq!(
            mem::size_of::<Payload>(),
            Payload::INLINE_BYTES + mem::size_of::<usize>().max(8)
        );
        // The vtable reference is the niche: an `Option<Payload>` (a reply slot) costs
        // nothing more.
        assert_eq!(mem::size_of::<Option<Payload>>(), mem::size_of::<Payload>());
    }

    #[test]
    fn what_fits() {
        assert!(Payload::fits_inline::<()>());
        assert!(Payload::fits_inline::<u64>());
        assert!(Payload::fits_inline::<[usize; INLINE_WORDS]>());
        assert!(!Payload::fits_inline::<[usize; INLINE_WORDS + 1]>());
        #[repr(align(16))]
        struct Wide(u8);
        assert!(!Payload::fits_inline::<Wide>());
        let p = Payload::new(Wide(1));
        assert!(!p.is_inline());
        assert_eq!(p.take::<Wide>().unwrap().0, 1);
    }

    #[test]
    fn inline_round_trip() {
        let p = Payload::new(5u64);
        assert!(p.is_inline());
        assert!(p.is::<u64>() && !p.is::<u32>());
        assert_eq!(p.type_id(), TypeId::of::<u64>());
        assert_eq!(p.downcast_ref::<u32>(), None);
        let mut p = p.take::<i64>().unwrap_err();
        *p.downcast_mut::<u64>().unwrap() += 1;
        assert_eq!(p.take::<u64>().unwrap(), 6);
    }

    #[test]
    fn boxed_round_trip() {
        let p = Payload::new([7u64; 8]);
        assert!(!p.is_inline());
        assert!(p.is::<[u64; 8]>());
        assert_eq!(p.type_id(), TypeId::of::<[u64; 8]>());
        let mut p = p.downcast::<u64>().unwrap_err();
        p.downcast_mut::<[u64; 8]>().unwrap()[0] = 1;
        assert_eq!(p.take::<[u64; 8]>().unwrap()[..2], [1, 7]);
    }

    #[test]
    fn a_box_stays_the_same_box() {
        let b = Box::new(9u64);
        let at = &*b as *const u64;
        let p = Payload::from(b);
        assert!(!p.is_inline());
        assert_eq!(
            p.type_id(),
            TypeId::of::<u64>(),
            "the value's type, not Box's"
        );
        let p = p.downcast::<u32>().unwrap_err();
        assert_eq!(&*p.downcast::<u64>().unwrap() as *const u64, at);

        let dynamic: Box<dyn Any + Send> = Box::new(String::from("x"));
        let p = Payload::from(dynamic);
        assert_eq!(p.downcast_ref::<String>().map(String::as_str), Some("x"));
        let back: Box<dyn Any + Send> = p.into();
        assert_eq!(back.downcast_ref::<String>().map(String::as_str), Some("x"));

        let sync: Box<dyn Any + Send + Sync> = Box::new(3u8);
        assert_eq!(Payload::from(sync).take::<u8>().unwrap(), 3);
    }

    #[test]
    fn into_box_of_inline() {
        let b = Payload::new(String::from("hi")).into_box();
        assert_eq!(*b.downcast::<String>().unwrap(), "hi");
        let b = Payload::new(()).into_box();
        assert!(b.is::<()>());
    }

    #[test]
    fn a_payload_inside_a_payload_keeps_its_type() {
        // As `Box::new(Box<dyn Any>)` did: the outer value is the inner payload, never
        // silently unwrapped.
        let outer = Payload::new(Payload::new(1u8));
        assert!(outer.is::<Payload>() && !outer.is::<u8>());
        assert_eq!(outer.take::<Payload>().unwrap().take::<u8>().unwrap(), 1);
    }

    #[test]
    fn debug_as_box_dyn_any() {
        let b: Box<dyn Any + Send> = Box::new(1u8);
        assert_eq!(format!("{:?}", Payload::new(1u8)), format!("{b:?}"));
        assert_eq!(format!("{:?}", Payload::new(1u8)), "Any { .. }");
    }

    #[test]
    fn drops_once_on_every_path() {
        let paths: [(&str, fn()); 12] = [
            ("inline drop", || drop(Payload::new(Counted))),
            ("inline take", || {
                drop(Payload::new(Counted).take::<Counted>())
            }),
            ("inline downcast", || {
                drop(Payload::new(Counted).downcast::<Counted>())
            }),
            ("inline into_box", || drop(Payload::new(Counted).into_box())),
            ("inline, wrong type", || {
                drop(Payload::new(Counted).take::<u8>().unwrap_err())
            }),
            ("boxed drop", || {
                drop(Payload::new(BigCounted([0; 8], Counted)))
            }),
            ("boxed take", || {
                drop(Payload::new(BigCounted([0; 8], Counted)).take::<BigCounted>())
            }),
            ("boxed, wrong type", || {
                drop(
                    Payload::new(BigCounted([0; 8], Counted))
                        .take::<u8>()
                        .unwrap_err(),
                )
            }),
            ("from a box, drop", || {
                drop(Payload::from(Box::new(Counted)))
            }),
            ("from a box, take", || {
                drop(Payload::from(Box::new(Counted)).take::<Counted>())
            }),
            ("from a box, downcast", || {
                drop(Payload::from(Box::new(Counted)).downcast::<Counted>())
            }),
            ("from a box, wrong type", || {
                drop(
                    Payload::from(Box::new(Counted))
                        .downcast::<u8>()
                        .unwrap_err(),
                )
            }),
        ];
        for (what, path) in paths {
            let before = drops();
            path();
            assert_eq!(drops() - before, 1, "{what}");
        }
        // `take` moves: the value is dropped by its new owner, not by `take`.
        let before = drops();
        let taken = Payload::new(Counted).take::<Counted>().ok().unwrap();
        assert_eq!(drops(), before);
        drop(taken);
        assert_eq!(drops(), before + 1);
    }
}
