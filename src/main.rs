/// mimalloc instead of the system allocator: a proxy allocates and frees per connection and per
/// request (task, read buffer, header map), and glibc's malloc spent a sixth of tether's
/// user-space instructions on it (callgrind, a new connection per request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tether::cli::main()
}
