"""What each dataset is: its files, mirrors, md5 checksums and class names."""

MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
CIFAR_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]

IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
CIFAR_TAR = "cifar-10-binary.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]

DATASETS = {
    "mnist": {
        "format": "idx",
        "mirrors": MNIST_MIRRORS,
        "files": IDX_FILES,
        # md5 of each file as the mirrors serve it (gzip), used for downloads
        "md5": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        # md5 of the uncompressed bytes, used for local files (any gzip wrapper is accepted)
        "raw_md5": {"train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
                    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
                    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
                    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637"},
        "image_shape": (1, 28, 28),
        "sizes": (60000, 10000),
        "class_names": [str(i) for i in range(10)],
        "license": "CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges)",
    },
    "fashion-mnist": {
        "format": "idx",
        "mirrors": FASHION_MIRRORS,
        "files": IDX_FILES,
        "md5": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        "raw_md5": {"train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
                    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
                    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965"},
        "image_shape": (1, 28, 28),
        "sizes": (60000, 10000),
        "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot"],
        "license": "MIT (Zalando Research)",
    },
    "cifar10": {
        "format": "cifar",
        "mirrors": CIFAR_MIRRORS,
        "files": [CIFAR_TAR],
        "md5": {CIFAR_TAR: "c32a1d4ab5d03f1284b67883e8d87530"},
        "raw_md5": {},
        "image_shape": (3, 32, 32),
        "sizes": (50000, 10000),
        "class_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                        "ship", "truck"],
        "license": "see https://www.cs.toronto.edu/~kriz/cifar.html (A. Krizhevsky, 2009)",
    },
}
ALIASES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
           "fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10"}
