// swift-tools-version:5.7
// The Swift bindings: UniFFI's generated/kwaai.swift over the C functions of libkwaai_uniffi
// (`cargo build -p kwaai-uniffi`; put target/debug or target/release on the linker's and loader's
// library paths). Depend on it with `.package(path: "PATH/TO/kwaai/bindings/uniffi")` and the product
// "Kwaai"; examples/swift uses it so.
import PackageDescription

let package = Package(
    name: "uniffi",
    products: [.library(name: "Kwaai", targets: ["Kwaai"])],
    targets: [
        .systemLibrary(name: "kwaaiFFI", path: "swift/kwaaiFFI"),
        .target(
            name: "Kwaai", dependencies: ["kwaaiFFI"], path: "generated",
            exclude: ["kwaaiFFI.h", "kwaaiFFI.modulemap", "uniffi"], sources: ["kwaai.swift"]
        ),
    ]
)
