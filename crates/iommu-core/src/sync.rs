//! The core's locks: std's with feature `std` (poisoning ignored: state is
//! kept consistent by construction, no lock is held across a call that
//! could panic half-way), `spin`'s without it, for a kernel that has no
//! threads library. Both have the same shape, so the core is written once;
//! the crates layered on the core (the DMA layer) use them too, so that one
//! feature decides how everything above a kernel's allocator waits.

#[cfg(feature = "std")]
mod imp {
    /// A mutual-exclusion lock.
    #[derive(Debug, Default)]
    pub struct Mutex<T: ?Sized>(std::sync::Mutex<T>);
    /// Its guard.
    pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
    /// A reader-writer lock.
    #[derive(Debug, Default)]
    pub struct RwLock<T: ?Sized>(std::sync::RwLock<T>);
    /// Its read guard.
    pub type RwLockReadGuard<'a, T> = std::sync::RwLockReadGuard<'a, T>;
    /// Its write guard.
    pub type RwLockWriteGuard<'a, T> = std::sync::RwLockWriteGuard<'a, T>;

    impl<T> Mutex<T> {
        /// A lock holding `v`.
        pub const fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }
    }
    impl<T: ?Sized> Mutex<T> {
        /// Waits for the lock.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        /// The value, through a unique borrow (no locking).
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(|e| e.into_inner())
        }
    }
    impl<T> RwLock<T> {
        /// A lock holding `v`.
        pub const fn new(v: T) -> Self {
            RwLock(std::sync::RwLock::new(v))
        }
    }
    impl<T: ?Sized> RwLock<T> {
        /// Waits for shared access.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        /// Waits for exclusive access.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    /// A mutual-exclusion lock.
    #[derive(Debug, Default)]
    pub struct Mutex<T: ?Sized>(spin::Mutex<T>);
    /// Its guard.
    pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
    /// A reader-writer lock.
    #[derive(Debug, Default)]
    pub struct RwLock<T: ?Sized>(spin::RwLock<T>);
    /// Its read guard.
    pub type RwLockReadGuard<'a, T> = spin::RwLockReadGuard<'a, T>;
    /// Its write guard.
    pub type RwLockWriteGuard<'a, T> = spin::RwLockWriteGuard<'a, T>;

    impl<T> Mutex<T> {
        /// A lock holding `v`.
        pub const fn new(v: T) -> Self {
            Mutex(spin::Mutex::new(v))
        }
    }
    impl<T: ?Sized> Mutex<T> {
        /// Waits for the lock.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        /// The value, through a unique borrow (no locking).
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
    }
    impl<T> RwLock<T> {
        /// A lock holding `v`.
        pub const fn new(v: T) -> Self {
            RwLock(spin::RwLock::new(v))
        }
    }
    impl<T: ?Sized> RwLock<T> {
        /// Waits for shared access.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }
        /// Waits for exclusive access.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write()
        }
    }
}

pub use imp::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
