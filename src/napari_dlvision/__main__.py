"""`python -m napari_dlvision`: napari with the pixel classifier docked and a sample loaded."""

import napari


def main():
    viewer = napari.Viewer(title="napari-dlvision")
    viewer.open_sample("napari-dlvision", "nuclei-2d")
    viewer.window.add_plugin_dock_widget("napari-dlvision", "Pixel classifier (random forest)")
    napari.run()


if __name__ == "__main__":
    main()
