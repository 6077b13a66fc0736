/*
 * Memory-ordering primitives for memory shared between processes.
 *
 * Every access to a word that another process (or thread) writes at the same time goes through
 * one of these macros, so a reader can find each ordering decision with grep and see the name
 * of the guarantee it relies on. They are thin wrappers over the GCC/Clang __atomic builtins,
 * which implement the C11 memory model; on x86-64 the acquire loads and release stores compile
 * to plain MOVs and only smp_mb() costs an instruction (a locked operation or MFENCE).
 *
 * The pairing rule: a store_release() by one side "publishes" every write that precedes it in
 * program order; a load_acquire() by the other side that reads the released value is
 * guaranteed to see all of those writes. Each call site in shm/ names the access it pairs with.
 *
 * The operands must be naturally aligned scalars of at most 8 bytes in shared memory.
 */
#ifndef WD_SHM_BARRIER_H
#define WD_SHM_BARRIER_H

/*
 * READ_ONCE() loads a value exactly once, with no ordering against other accesses (relaxed).
 * It stops the compiler from re-reading the location later (a double fetch that a hostile
 * peer could race: the bounds check would see one value and the use another), from tearing
 * it into smaller loads, and from hoisting it out of a polling loop. Use it for a word written
 * by the other side whose value needs no accompanying data, such as a doorbell flag.
 */
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/*
 * WRITE_ONCE() stores a value exactly once and untorn, with no ordering (relaxed). Use it for
 * a word that the other side reads with READ_ONCE() and that publishes nothing else.
 */
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/*
 * load_acquire() reads *p; no load or store that follows it in program order may be performed
 * before it. When it returns a value written by store_release(), every write the releasing
 * side made before that store_release() is visible afterwards. The ring consumer reads the
 * producer's tail this way before it reads the entries the tail covers.
 */
#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)

/*
 * store_release() writes v to *p; no load or store that precedes it in program order may be
 * performed after it. The ring producer writes the entry and then store_release()s the new
 * tail, so a consumer that load_acquire()s the tail can never see the tail before the entry.
 * The consumer store_release()s the head after it has copied an entry out, so the producer
 * never overwrites a slot the consumer is still reading.
 */
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/*
 * smp_mb() is a full barrier: every load and store before it is performed before any load or
 * store after it, including the store->load ordering that acquire/release do not give. The
 * doorbell needs exactly that Dekker-style ordering: the sleeper stores "I am waiting" and
 * then loads the tail; the producer stores the tail and then loads "is anyone waiting".
 * With smp_mb() between the store and the load on both sides, at least one of the two loads
 * sees the other's store, so a wake-up is never lost.
 */
#define smp_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)

/*
 * smp_rmb() orders earlier loads before later loads (an acquire fence). A seqlock reader
 * copies the record with relaxed loads, then smp_rmb(), then re-reads the sequence counter;
 * the fence makes the copy complete before the second counter read, so an unchanged even
 * counter proves the copy is not torn.
 */
#define smp_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)

/*
 * smp_wmb() orders earlier stores before later stores (a release fence). A seqlock writer
 * makes the counter odd, then smp_wmb(), then rewrites the record, so no reader can see new
 * data together with the old even counter.
 */
#define smp_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

/*
 * cpu_relax() goes in the body of every spin loop: on x86 PAUSE lets the sibling hyperthread
 * run and avoids the memory-order mis-speculation penalty on loop exit; on arm64 YIELD is the
 * equivalent hint. It is not a barrier.
 */
#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

#endif
