"""Face data: the embedded synthetic faces, the Kaggle CSV and image folders, all as uint8 tensors."""
from facegen.data.base import DataError, FaceDataModule, FaceDataset, epoch_batches, stable_permutation
from facegen.data.csv_reader import CSVFaces, read_age_gender_csv, read_faces_csv
from facegen.data.folder import FolderFaces, read_image_folder
from facegen.data.synthetic import SyntheticFaces, draw_faces

__all__ = [
    "CSVFaces", "DataError", "FaceDataModule", "FaceDataset", "FolderFaces", "SyntheticFaces",
    "draw_faces", "epoch_batches", "read_age_gender_csv", "read_faces_csv", "read_image_folder",
    "stable_permutation",
]
