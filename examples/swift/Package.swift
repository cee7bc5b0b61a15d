// swift-tools-version:5.7
// Start a node, join a swarm, stream a generation, from Swift: `swift run generate MODEL_DIR INITIAL_PEER`
// after `cargo build -p kwaai-uniffi` (the linker finds libkwaai_uniffi through LIBRARY_PATH and
// LD_LIBRARY_PATH / DYLD_LIBRARY_PATH set to target/debug).
import PackageDescription

let package = Package(
    name: "KwaaiExample",
    dependencies: [.package(path: "../../bindings/uniffi")],
    targets: [
        .executableTarget(name: "generate", dependencies: [.product(name: "Kwaai", package: "uniffi")], path: "Sources/Generate"),
    ]
)
